"""Saving and loading MSGM and SGM models without pickle.

A model file is a zip archive with a JSON description, `model.json`, and one `.npy` entry per
array. The description names every part of the model by a whitelisted msgm_pp class with its
hyperparameters (for the networks and noises) or its fields (for the plain array containers), so
loading runs no code from the file: arrays are read with `allow_pickle=False` and classes are looked
up in a fixed table. Zip CRC-32 checksums catch corrupted bytes, and a truncated file has no
central directory, so both are refused with a ValueError, as are files of another format or of a
newer format version.

`save` writes to a temporary file in the target directory and renames it into place, so an error
or a crash in the middle of a save leaves any previous file intact.
"""

import dataclasses
import io
import json
import os
import tempfile
import zipfile
import zlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from msgm_pp.baselines import SGM, VPScore
from msgm_pp.distribution import MSGM
from msgm_pp.latent import EmpiricalNorm, KDEGPDNorm, KDENorm
from msgm_pp.nets import LatticeScoreNet, ScoreMLP, TimeMLP
from msgm_pp.noise import DenseNoise, IsotropicNoise, LatticeNoise, TensorNoise
from msgm_pp.schedule import LinearSchedule
from msgm_pp.score import TangentScore
from msgm_pp.train import TrainingHistory

FORMAT = "msgm_pp.model"
FORMAT_VERSION = 2  # 2 added the SGM; version-1 files hold an MSGM
_CORRUPT_ENTRY = (zipfile.BadZipFile, zlib.error, EOFError, OSError)
_DESCRIPTION = "model.json"
_MODELS = {"MSGM": MSGM, "SGM": SGM}

# Plain modules are rebuilt field by field through their constructor.
_PLAIN = {
    cls.__name__: cls
    for cls in (
        TangentScore,
        VPScore,
        LinearSchedule,
        TensorNoise,
        EmpiricalNorm,
        KDENorm,
        KDEGPDNorm,
        TrainingHistory,
    )
}
_ACTIVATIONS = {
    "swish": jax.nn.swish,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}


class _Writer:
    def __init__(self):
        self.arrays: list[np.ndarray] = []

    def array(self, value) -> dict:
        self.arrays.append(np.asarray(value))
        return {"array": len(self.arrays) - 1}

    def leaves(self, module) -> list[dict]:
        return [self.array(leaf) for leaf in jax.tree.leaves(eqx.filter(module, eqx.is_array))]


def _activation_name(fn) -> str | None:
    return next((name for name, known in _ACTIVATIONS.items() if known is fn), None)


def _hyperparameters(value) -> dict | None:
    """The constructor arguments that rebuild a network or noise of this shape, if it has any."""
    if isinstance(value, IsotropicNoise | DenseNoise):
        return {"dim": value.dim}
    if isinstance(value, LatticeNoise):
        return {"shape": list(value.shape)}
    if isinstance(value, ScoreMLP | TimeMLP):
        activation = _activation_name(value.mlp.activation)
        if activation is None:
            return None
        return {
            "dim": value.mlp.out_size,
            "width": value.mlp.width_size,
            "depth": value.mlp.depth,
            "num_frequencies": value.features.num_frequencies,
            "activation": activation,
        }
    if isinstance(value, LatticeScoreNet):
        return {
            "shape": list(value.shape),
            "channels": value.lift.out_channels,
            "num_blocks": len(value.blocks),
            "kernel_size": value.lift.kernel_size[0],
            "num_frequencies": value.features.num_frequencies,
        }
    return None


def _encode(value, writer: _Writer):
    if isinstance(value, jax.Array | np.ndarray):
        return writer.array(value)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, tuple | list):
        return {"sequence": [_encode(item, writer) for item in value]}
    if type(value) in _PLAIN.values():
        fields = {
            f.name: _encode(getattr(value, f.name), writer) for f in dataclasses.fields(value)
        }
        if type(value) in (TangentScore, VPScore) and "unknown" in fields["net"]:
            fields["net"] = {
                "class": "custom",
                "type": type(value.net).__name__,
                "leaves": writer.leaves(value.net),
            }
        return {"class": type(value).__name__, "fields": fields}
    config = _hyperparameters(value)
    if config is not None:
        return {"class": type(value).__name__, "config": config, "leaves": writer.leaves(value)}
    if isinstance(value, eqx.Module):
        return {"unknown": type(value).__name__}
    raise TypeError(f"cannot save a value of type {type(value).__name__}.")


def _refuse_unknown_parts(description) -> None:
    if isinstance(description, dict):
        if "unknown" in description:
            raise TypeError(
                f"cannot save a model part of type {description['unknown']}: only msgm_pp "
                "noises, schedules and norm models (and any Equinox network) can be saved."
            )
        for value in description.values():
            _refuse_unknown_parts(value)
    elif isinstance(description, list):
        for value in description:
            _refuse_unknown_parts(value)


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def save(model, path) -> None:
    """Write `model` (an MSGM or SGM) to `path` atomically; see the module docstring."""
    from msgm_pp import __version__

    if type(model) not in _MODELS.values():
        raise TypeError(f"`model` must be an MSGM or an SGM, got {type(model).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` {path!r} is a directory; give a file name.")
    writer = _Writer()
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "msgm_pp_version": __version__,
        "model": type(model).__name__,
        "dim": model.dim,
        **{part: _encode(getattr(model, part), writer) for part in model.pytree_data_fields},
        "options": model.options,
    }
    _refuse_unknown_parts(description)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".msgm-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(_DESCRIPTION, json.dumps(description, indent=1))
                for index, array in enumerate(writer.arrays):
                    buffer = io.BytesIO()
                    np.save(buffer, array, allow_pickle=False)
                    archive.writestr(f"arrays/{index}.npy", buffer.getvalue())
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class _Reader:
    def __init__(self, archive: zipfile.ZipFile, path: str):
        self.archive, self.path = archive, path

    def fail(self, reason: str):
        return ValueError(f"{self.path} is not a valid msgm_pp model file: {reason}")

    def read(self, name: str) -> bytes:
        try:
            return self.archive.read(name)
        except KeyError:
            raise self.fail(f"the entry {name} is missing.") from None
        except _CORRUPT_ENTRY as error:
            raise self.fail(f"the entry {name} is corrupt ({error}).") from None

    def array(self, spec) -> jax.Array:
        index = spec.get("array") if isinstance(spec, dict) else None
        if not isinstance(index, int):
            raise self.fail(f"expected an array reference, found {spec!r}.")
        name = f"arrays/{index}.npy"
        data = self.read(name)
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as error:
            raise self.fail(f"the entry {name} is not a plain numeric array ({error}).") from None
        if array.dtype.kind not in "biuf":
            raise self.fail(f"the entry {name} has unsupported dtype {array.dtype}.")
        return jnp.asarray(array)

    def fill(self, skeleton, specs, where: str):
        """The skeleton module with its array leaves replaced by the arrays `specs` point to."""
        params, static = eqx.partition(skeleton, eqx.is_array)
        leaves, treedef = jax.tree.flatten(params)
        if not isinstance(specs, list) or len(specs) != len(leaves):
            raise self.fail(f"{where} needs {len(leaves)} arrays, the file lists {specs!r:.80}.")
        loaded = []
        for number, (leaf, spec) in enumerate(zip(leaves, specs, strict=True)):
            array = self.array(spec)
            if array.shape != leaf.shape or array.dtype != leaf.dtype:
                raise self.fail(
                    f"array {number} of {where} has shape {array.shape} and dtype {array.dtype}, "
                    f"expected {leaf.shape} and {leaf.dtype}."
                )
            loaded.append(array)
        return eqx.combine(jax.tree.unflatten(treedef, loaded), static)


def _skeleton(name: str, config: dict, net):
    if name == "IsotropicNoise":
        return IsotropicNoise(config["dim"])
    if name == "LatticeNoise":
        return LatticeNoise(tuple(config["shape"]))
    if name == "DenseNoise":
        return DenseNoise(config["dim"], key=jax.random.key(0))
    if name in ("ScoreMLP", "TimeMLP"):
        return {"ScoreMLP": ScoreMLP, "TimeMLP": TimeMLP}[name](
            config["dim"],
            key=jax.random.key(0),
            width=config["width"],
            depth=config["depth"],
            num_frequencies=config["num_frequencies"],
            activation=_ACTIVATIONS[config["activation"]],
        )
    if name == "LatticeScoreNet":
        return LatticeScoreNet(
            tuple(config["shape"]),
            key=jax.random.key(0),
            channels=config["channels"],
            num_blocks=config["num_blocks"],
            kernel_size=config["kernel_size"],
            num_frequencies=config["num_frequencies"],
        )
    if name == "custom":
        return net
    raise KeyError(name)


def _decode(spec, reader: _Reader, net, where: str):
    if spec is None or isinstance(spec, bool | int | float | str):
        return spec
    if not isinstance(spec, dict):
        raise reader.fail(f"unexpected entry {spec!r:.80} in {where}.")
    if "array" in spec:
        return reader.array(spec)
    if "sequence" in spec:
        return tuple(_decode(item, reader, net, where) for item in spec["sequence"])
    name = spec.get("class")
    if name in _PLAIN:
        fields = spec.get("fields")
        if not isinstance(fields, dict):
            raise reader.fail(f"{where} ({name}) has no fields.")
        values = {
            key: _decode(value, reader, net, f"{where}.{key}") for key, value in fields.items()
        }
        try:
            return _PLAIN[name](**values)
        except (TypeError, ValueError) as error:
            raise reader.fail(f"{where} ({name}) cannot be rebuilt: {error}") from None
    if name == "custom" and net is None:
        raise ValueError(
            f"the model in {reader.path} has a custom network of type {spec.get('type')!r}: pass "
            "a network of the same structure as `net=` (e.g. a freshly initialised one)."
        )
    try:
        skeleton = _skeleton(name, spec.get("config", {}), net)
    except (KeyError, TypeError, ValueError) as error:
        raise reader.fail(f"{where} names an unknown or malformed part ({error}).") from None
    return reader.fill(skeleton, spec.get("leaves"), where)


def load(path, *, net=None):
    """Read a model written by `MSGM.save` or `SGM.save`.

    Args:
        path: the model file.
        net: only for models trained with a custom network: a network of the same structure
            (any initialisation), whose arrays are replaced by the saved ones.

    Returns:
        The MSGM or SGM, giving bit-identical samples and log-densities to the saved model.
    """
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"{path} is not a valid msgm_pp model file: it is not a zip archive ({error})."
        ) from None
    with archive:
        reader = _Reader(archive, path)
        try:
            description = json.loads(reader.read(_DESCRIPTION))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise reader.fail(f"{_DESCRIPTION} is not JSON ({error}).") from None
        if not isinstance(description, dict) or description.get("format") != FORMAT:
            raise reader.fail("its description does not name the msgm_pp model format.")
        version = description.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"{path} has model format version {version!r}, but this msgm_pp "
                f"reads versions up to {FORMAT_VERSION}: upgrade msgm_pp."
            )
        model_class = _MODELS.get(description.get("model", "MSGM"))
        if model_class is None:
            raise reader.fail(f"it holds an unknown model type {description.get('model')!r}.")
        parts = {
            part: _decode(description.get(part), reader, net, part)
            for part in model_class.pytree_data_fields
        }
        options = description.get("options")
        if not isinstance(options, dict):
            raise reader.fail("its options are missing.")
        try:
            return model_class(**parts, **options)
        except (TypeError, ValueError) as error:
            raise reader.fail(f"its parts do not form a model ({error}).") from None
