"""Saving and loading models without pickle, through an allow-list of self-describing parts.

A model file is a zip archive with a JSON description, `model.json`, and one `.npy` entry per
array. Every part of a model describes itself and is put on the allow-list by the
:func:`serializable` decorator where it is defined, so this module knows no class of the package:

- a part whose class has `config()` and `from_config(config)` (networks and noises) is saved as its
  constructor settings plus its arrays, and rebuilt as `from_config(config)` with the arrays put
  back (a `config()` of None means the part cannot describe itself, e.g. an unknown activation);
- any other part is saved field by field (its dataclass fields, or `constructor_arguments()`) and
  rebuilt through its constructor, which validates the values;
- a network (a field named `net`) of a class that is not on the list is saved as its arrays only
  and needs a skeleton of the same structure at load time (`load(path, net=...)`).

Loading looks classes up on the allow-list only, reads arrays with `allow_pickle=False`, and runs
no code from the file. It allocates nothing that the file does not justify: the description is at
most 1 MiB and 64 levels deep; the archive declares at most 4 GiB of arrays, and no entry above
1 MiB inflates more than 200-fold; each `.npy` header is read first, and an array is read only if
its declared shape fits its bytes and, for parts rebuilt from a config, matches the shape that the
config implies (computed abstractly, with `equinox.filter_eval_shape`); config values are bounded
by the part that reads them (:func:`config_int`). Zip CRC-32 checksums catch corrupted bytes, and a truncated file has no
central directory, so both are refused with a ValueError, as are files of another format or of a
newer format version. `save` writes to a temporary file in the target directory and renames it into
place, so an error or a crash in the middle of a save leaves any previous file intact.
"""

import dataclasses
import io
import json
import math
import os
import tempfile
import zipfile
import zlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from msgm_pp._version import __version__

FORMAT = "msgm_pp.model"
FORMAT_VERSION = 3  # 2 added the SGM, 3 the sampler and density objects in the options
_CORRUPT_ENTRY = (zipfile.BadZipFile, zlib.error, EOFError, OSError)
_DESCRIPTION = "model.json"
_MAX_DESCRIPTION_BYTES = 2**20
_MAX_NESTING = 64
_MAX_TOTAL_BYTES = 2**32
_MAX_RATIO = 200
_RATIO_CHECKED_ABOVE = 2**20
_ALLOWED: dict[str, type] = {}


def serializable(cls: type) -> type:
    """Class decorator: allow model files to name `cls` (see the module docstring)."""
    known = _ALLOWED.setdefault(cls.__name__, cls)
    if known is not cls:
        raise RuntimeError(f"two serializable classes are named {cls.__name__}.")
    return cls


def config_int(config: dict, name: str, maximum: int) -> int:
    """`config[name]` checked to be an int in [1, maximum] (a bound on what loading allocates)."""
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{name} = {value!r:.40} is not an int in [1, {maximum}]")
    return value


def config_shape(config: dict, max_side: int = 2**14) -> tuple[int, ...]:
    """A saved ring or grid shape, checked before anything of that size is built."""
    shape = config["shape"]
    if not isinstance(shape, list) or len(shape) not in (1, 2):
        raise ValueError(f"shape = {shape!r:.40} is not a list of one or two sides")
    return tuple(config_int({"side": side}, "side", max_side) for side in shape)


def constructor_arguments(value) -> dict:
    """The keyword arguments that rebuild `value` through its constructor."""
    if hasattr(value, "constructor_arguments"):
        return value.constructor_arguments()
    return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}


class _Writer:
    def __init__(self):
        self.arrays: list[np.ndarray] = []

    def array(self, value) -> dict:
        self.arrays.append(np.asarray(value))
        return {"array": len(self.arrays) - 1}

    def leaves(self, module) -> list[dict]:
        return [self.array(leaf) for leaf in jax.tree.leaves(eqx.filter(module, eqx.is_array))]

    def encode(self, value, name: str = ""):
        if isinstance(value, jax.Array | np.ndarray):
            return self.array(value)
        if isinstance(value, bool | int | float | str) or value is None:
            return value
        if isinstance(value, tuple | list):
            return {"sequence": [self.encode(item, name) for item in value]}
        allowed = _ALLOWED.get(type(value).__name__) is type(value)
        config = value.config() if allowed and hasattr(value, "config") else None
        if config is not None:
            return {"class": type(value).__name__, "config": config, "leaves": self.leaves(value)}
        if allowed and not hasattr(value, "config"):
            fields = {
                key: self.encode(item, key) for key, item in constructor_arguments(value).items()
            }
            return {"class": type(value).__name__, "fields": fields}
        if name == "net" and isinstance(value, eqx.Module):
            return {"class": "custom", "type": type(value).__name__, "leaves": self.leaves(value)}
        raise TypeError(
            f"cannot save a model part of type {type(value).__name__}: only msgm_pp parts (and "
            "any Equinox network) can be saved."
        )


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def save(model, path) -> None:
    """Write `model` (an MSGM or SGM) to `path` atomically; see the module docstring."""
    if not getattr(model, "saved_as_model", False):
        raise TypeError(f"`model` must be an MSGM or an SGM, got {type(model).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` {path!r} is a directory; give a file name.")
    writer = _Writer()
    arguments = constructor_arguments(model)
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "msgm_pp_version": __version__,
        "model": type(model).__name__,
        "dim": model.dim,
        **{part: writer.encode(arguments[part], part) for part in model.pytree_data_fields},
        "options": {
            name: writer.encode(value, name)
            for name, value in arguments.items()
            if name not in model.pytree_data_fields
        },
    }
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


def _nesting(value) -> int:
    """How deeply lists and dicts nest in a parsed JSON value (without recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


class _Reader:
    def __init__(self, archive: zipfile.ZipFile, path: str, net):
        self.archive, self.path, self.net = archive, path, net

    def fail(self, reason: str):
        return ValueError(f"{self.path} is not a valid msgm_pp model file: {reason}")

    def description(self) -> dict:
        try:
            info = self.archive.getinfo(_DESCRIPTION)
        except KeyError:
            raise self.fail(f"the entry {_DESCRIPTION} is missing.") from None
        if info.file_size > _MAX_DESCRIPTION_BYTES:
            raise self.fail(f"{_DESCRIPTION} has {info.file_size} bytes, over the 1 MiB limit.")
        try:
            description = json.loads(self.read(_DESCRIPTION))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise self.fail(f"{_DESCRIPTION} is not JSON ({error}).") from None
        except RecursionError:
            raise self.fail(f"{_DESCRIPTION} is nested too deeply.") from None
        if _nesting(description) > _MAX_NESTING:
            raise self.fail(f"{_DESCRIPTION} is nested more than {_MAX_NESTING} levels deep.")
        return description

    def read(self, name: str) -> bytes:
        try:
            return self.archive.read(name)
        except KeyError:
            raise self.fail(f"the entry {name} is missing.") from None
        except _CORRUPT_ENTRY as error:
            raise self.fail(f"the entry {name} is corrupt ({error}).") from None

    def check_sizes(self) -> None:
        """Refuse archives that declare more than 4 GiB, or entries that inflate too much."""
        infos = self.archive.infolist()
        total = sum(info.file_size for info in infos)
        if total > _MAX_TOTAL_BYTES:
            raise self.fail(f"its entries declare {total} bytes in all, over the 4 GiB limit.")
        for info in infos:
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > _RATIO_CHECKED_ABOVE and ratio > _MAX_RATIO:
                raise self.fail(
                    f"the entry {info.filename} inflates {ratio:.0f}-fold ({info.compress_size} to "
                    f"{info.file_size} bytes), over the limit of {_MAX_RATIO}."
                )

    def array(self, spec, expected=None) -> jax.Array:
        """The array `spec` points to; with `expected` (a jax.ShapeDtypeStruct) its shape must be
        that one, which is checked from the header before the data are read."""
        index = spec.get("array") if isinstance(spec, dict) else None
        if isinstance(index, bool) or not isinstance(index, int):
            raise self.fail(f"expected an array reference, found {spec!r:.80}.")
        name = f"arrays/{index}.npy"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise self.fail(f"the entry {name} is missing.") from None
        try:
            with self.archive.open(info) as stream:
                shape, dtype = self.header(stream, name)
                if expected is not None and shape != expected.shape:
                    raise self.fail(
                        f"{name} has shape {shape}, but its part needs {expected.shape}."
                    )
                size = math.prod(shape) * dtype.itemsize
                if size != info.file_size - stream.tell():
                    raise self.fail(
                        f"{name} declares shape {shape} ({size} bytes) but holds "
                        f"{info.file_size - stream.tell()} bytes."
                    )
                data = stream.read(size)
                stream.read(1)  # reach the end, where the CRC is checked
        except _CORRUPT_ENTRY as error:
            raise self.fail(f"the entry {name} is corrupt ({error}).") from None
        array = np.frombuffer(data, dtype).reshape(shape)
        if array.dtype.kind == "f":
            # A model saved with or without x64 loads in either mode, in the current float type.
            return jnp.asarray(array, dtype=jnp.result_type(float))
        return jnp.asarray(array)

    def header(self, stream, name: str):
        """(shape, dtype) from the .npy header; only plain numeric C-order arrays are accepted."""
        readers = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        try:
            version = np.lib.format.read_magic(stream)
            shape, fortran_order, dtype = readers[version](stream)
        except (KeyError, ValueError, SyntaxError, TypeError) as error:
            raise self.fail(f"the entry {name} is not a plain numeric array ({error}).") from None
        if dtype.kind not in "biuf" or dtype.hasobject:
            raise self.fail(f"the entry {name} has unsupported dtype {dtype}.")
        if fortran_order:
            raise self.fail(f"the entry {name} is in Fortran order; msgm_pp writes C order.")
        return tuple(shape), dtype

    def fill(self, skeleton, specs, where: str):
        """The abstract skeleton (from `equinox.filter_eval_shape`) with its array leaves replaced by
        the arrays `specs` point to, each checked against its leaf's shape before it is read."""
        is_leaf = lambda x: isinstance(x, jax.ShapeDtypeStruct | jax.Array)
        params, static = eqx.partition(skeleton, is_leaf)
        leaves, treedef = jax.tree.flatten(params)
        if not isinstance(specs, list) or len(specs) != len(leaves):
            raise self.fail(f"{where} needs {len(leaves)} arrays, the file lists {specs!r:.80}.")
        loaded = []
        for number, (leaf, spec) in enumerate(zip(leaves, specs, strict=True)):
            array = self.array(spec, expected=leaf)
            if array.dtype != leaf.dtype and array.dtype.kind == leaf.dtype.kind == "f":
                array = array.astype(leaf.dtype)
            if array.dtype != leaf.dtype:
                raise self.fail(
                    f"array {number} of {where} has dtype {array.dtype}, expected {leaf.dtype}."
                )
            loaded.append(array)
        return eqx.combine(jax.tree.unflatten(treedef, loaded), static)

    def decode(self, spec, where: str):
        if spec is None or isinstance(spec, bool | int | float | str):
            return spec
        if not isinstance(spec, dict):
            raise self.fail(f"unexpected entry {spec!r:.80} in {where}.")
        if "array" in spec:
            return self.array(spec)
        if "sequence" in spec:
            return tuple(self.decode(item, where) for item in spec["sequence"])
        name = spec.get("class")
        if name == "custom":
            if self.net is None:
                raise ValueError(
                    f"the model in {self.path} has a custom network of type {spec.get('type')!r}: "
                    "pass a network of the same structure as `net=` (e.g. a freshly initialised one)."
                )
            return self.fill(self.net, spec.get("leaves"), where)
        cls = _ALLOWED.get(name) if isinstance(name, str) else None
        if cls is None:
            raise self.fail(f"{where} names an unknown part {name!r:.80}.")
        if "config" in spec:
            try:
                skeleton = eqx.filter_eval_shape(cls.from_config, spec["config"])
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                raise self.fail(f"{where} ({name}) has a malformed config ({error}).") from None
            return self.fill(skeleton, spec.get("leaves"), where)
        fields = spec.get("fields")
        if not isinstance(fields, dict):
            raise self.fail(f"{where} ({name}) has no fields.")
        values = {key: self.decode(value, f"{where}.{key}") for key, value in fields.items()}
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise self.fail(f"{where} ({name}) cannot be rebuilt: {error}") from None


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
        reader = _Reader(archive, path, net)
        reader.check_sizes()
        description = reader.description()
        if not isinstance(description, dict) or description.get("format") != FORMAT:
            raise reader.fail("its description does not name the msgm_pp model format.")
        version = description.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"{path} has model format version {version!r}, but this msgm_pp "
                f"reads versions up to {FORMAT_VERSION}: upgrade msgm_pp."
            )
        model_name = description.get("model", "MSGM")
        model_class = _ALLOWED.get(model_name) if isinstance(model_name, str) else None
        if not getattr(model_class, "saved_as_model", False):
            raise reader.fail(f"it holds an unknown model type {model_name!r}.")
        parts = {
            part: reader.decode(description.get(part), part)
            for part in model_class.pytree_data_fields
        }
        options = description.get("options")
        if not isinstance(options, dict):
            raise reader.fail("its options are missing.")
        options = {name: reader.decode(value, name) for name, value in options.items()}
        if version < 3:
            options = model_class.options_from_format_2(options)
        try:
            return model_class(**parts, **options)
        except (TypeError, ValueError) as error:
            raise reader.fail(f"its parts do not form a model ({error}).") from None
