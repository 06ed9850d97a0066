"""Saving and loading: bit-identical round trips, atomic writes, and refusal of bad files."""

import io
import json
import os
import pickle
import warnings
import zipfile

import equinox as eqx
import jax
import numpy as np
import pytest
from test_density import point_mass_model

import msgm_pp as mp
from msgm_pp import serialization as model_io

BUDGET = dict(max_steps=20, eval_every=10, progress=False)


@pytest.fixture(scope="module")
def data():
    key_direction, key_norm = jax.random.split(jax.random.key(0))
    z = jax.random.normal(key_direction, (600, 3))
    return z * np.exp(jax.random.normal(key_norm, (600, 1)))


@pytest.fixture(scope="module")
def model(data):
    return mp.MSGM.fit(data, key=jax.random.key(1), **BUDGET).with_options(density=mp.ODEDensity(8))


def edited_copy(source, target, name, content):
    """Copy the model archive `source` to `target` with the entry `name` replaced by `content`."""
    with zipfile.ZipFile(source) as archive:
        entries = {entry: archive.read(entry) for entry in archive.namelist()}
    entries[name] = content
    with zipfile.ZipFile(target, "w") as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)


def assert_same_model(a, b):
    key = jax.random.key(7)
    x = a.sample(key, (16,))
    np.testing.assert_array_equal(x, b.sample(key, (16,)))
    np.testing.assert_array_equal(a.log_prob(x), b.log_prob(x))
    assert a.options == b.options


def test_round_trip_is_bit_identical(model, tmp_path):
    path = tmp_path / "model.msgm"
    model.save(path)
    loaded = mp.load(path)
    assert_same_model(model, loaded)
    assert loaded.history.settings == model.history.settings
    np.testing.assert_array_equal(loaded.history.train_loss, model.history.train_loss)
    assert dict(loaded.history.settings)["max_steps"] == 20


def untrained_msgm(noise, net):
    score = mp.TangentScore(net, noise, mp.mixing_schedule(noise), 0.5, 2.0, 1e-3)
    norm_model = mp.KDENorm.fit(np.random.default_rng(0).standard_normal(500))
    return mp.MSGM(score, norm_model, sampler=mp.ODESampler(8), density=mp.ODEDensity(4))


def untrained_sgm():
    net = mp.TimeMLP(3, key=jax.random.key(0), width=16, depth=1)
    score = mp.VPScore(net, mp.vp_schedule(), jax.numpy.ones(3), 2 * jax.numpy.ones(3), 1e-3)
    return mp.SGM(
        score,
        sampler=mp.SDESampler(8, stochasticity=0.5),
        density=mp.ODEDensity(4, mp.HutchinsonTrace(2, seed=3), extrapolate=True),
    )


BUILDERS = {
    "dense": lambda: untrained_msgm(
        mp.DenseNoise(3, key=jax.random.key(0)),
        mp.ScoreMLP(3, key=jax.random.key(1), width=8, direction_scale=8.0),
    ),
    "lattice": lambda: untrained_msgm(
        mp.LatticeNoise((4, 4)), mp.LatticeScoreNet((4, 4), key=jax.random.key(1), channels=4)
    ),
    "sgm": untrained_sgm,
}


@pytest.mark.parametrize("name", BUILDERS)
def test_round_trip_for_every_noise_network_and_model(name, tmp_path):
    model = BUILDERS[name]()
    model.save(tmp_path / "m.msgm")
    loaded = mp.load(tmp_path / "m.msgm")
    assert type(loaded) is type(model)
    parts = lambda m: (*(getattr(m, part) for part in m.pytree_data_fields), m.options)
    assert eqx.tree_equal(parts(loaded), parts(model))
    if name == "sgm":
        assert_same_model(model, loaded)


def test_custom_network_needs_a_skeleton(tmp_path):
    model, _ = point_mass_model(3, density=mp.ODEDensity(8))
    model.save(tmp_path / "custom.msgm")
    with pytest.raises(ValueError, match="custom network of type 'PointMassScore'"):
        mp.load(tmp_path / "custom.msgm")
    assert_same_model(model, mp.load(tmp_path / "custom.msgm", net=model.score.net))


def test_a_failed_save_leaves_the_previous_file_intact(model, tmp_path, monkeypatch):
    path = tmp_path / "model.msgm"
    model.save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_io.np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.msgm"]
    monkeypatch.undo()
    assert_same_model(model, mp.load(path))


def test_truncated_and_corrupted_files_are_refused(model, tmp_path):
    path = tmp_path / "model.msgm"
    model.save(path)
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.msgm"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a valid msgm_pp model file"):
        mp.load(truncated)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("arrays/3.npy")
    flipped = bytearray(raw)
    flipped[info.header_offset + 60] ^= 0xFF
    corrupted = tmp_path / "corrupted.msgm"
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="not a valid msgm_pp model file"):
        mp.load(corrupted)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_pickle_payloads_are_refused_without_running_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.msgm").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ValueError, match="not a zip archive"):
        mp.load(tmp_path / "raw.msgm")
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Exploit()], dtype=object), allow_pickle=True)
    description = {
        "format": model_io.FORMAT,
        "format_version": 1,
        "score": {"array": 0},
    }
    with zipfile.ZipFile(tmp_path / "object.msgm", "w") as archive:
        archive.writestr("model.json", json.dumps(description))
        archive.writestr("arrays/0.npy", buffer.getvalue())
    with pytest.raises(ValueError, match="unsupported dtype object"):
        mp.load(tmp_path / "object.msgm")
    assert not (tmp_path / "pwned.txt").exists()


def test_foreign_and_future_files_are_refused(model, tmp_path):
    with zipfile.ZipFile(tmp_path / "foreign.zip", "w") as archive:
        archive.writestr("model.json", json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="does not name the msgm_pp model format"):
        mp.load(tmp_path / "foreign.zip")
    model.save(tmp_path / "model.msgm")
    description = json.loads(zipfile.ZipFile(tmp_path / "model.msgm").read("model.json"))
    description["format_version"] = model_io.FORMAT_VERSION + 1
    edited_copy(
        tmp_path / "model.msgm", tmp_path / "future.msgm", "model.json", json.dumps(description)
    )
    with pytest.raises(ValueError, match="upgrade msgm_pp"):
        mp.load(tmp_path / "future.msgm")
    description["format_version"], description["model"] = model_io.FORMAT_VERSION, "GAN"
    edited_copy(
        tmp_path / "model.msgm", tmp_path / "gan.msgm", "model.json", json.dumps(description)
    )
    with pytest.raises(ValueError, match="unknown model type 'GAN'"):
        mp.load(tmp_path / "gan.msgm")


def as_format(version: int, description: dict) -> dict:
    """The description as msgm_pp 0.1 wrote it: options as names and step counts, and no model
    entry in format version 1 (from before the SGM)."""
    old = dict(description, format_version=version)
    if version == 1:
        del old["model"]
    sampler, density = old["options"]["sampler"], old["options"]["density"]
    trace = density["fields"]["trace"]
    old["options"] = {
        "sampler": {"SDESampler": "sde", "ODESampler": "ode"}[sampler["class"]],
        "sample_steps": sampler["fields"]["steps"],
        "log_prob_steps": density["fields"]["steps"],
        "trace": {"ExactTrace": "exact", "HutchinsonTrace": "hutchinson"}[trace["class"]],
        "num_probes": trace["fields"].get("num_probes", 1),
    }
    return old


@pytest.mark.parametrize("version", [1, 2])
def test_files_of_msgm_pp_0_1_load(model, tmp_path, version):
    """Format 1 (no model entry: an MSGM) and 2 (options as names) load without a warning."""
    model = model.with_options(sampler=mp.ODESampler(12))
    model.save(tmp_path / "model.msgm")
    description = json.loads(zipfile.ZipFile(tmp_path / "model.msgm").read("model.json"))
    edited_copy(
        tmp_path / "model.msgm",
        tmp_path / "old.msgm",
        "model.json",
        json.dumps(as_format(version, description)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert_same_model(model, mp.load(tmp_path / "old.msgm"))


def test_mismatched_arrays_are_refused(model, tmp_path):
    model.save(tmp_path / "model.msgm")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 2), np.float32))
    edited_copy(
        tmp_path / "model.msgm", tmp_path / "edited.msgm", "arrays/0.npy", buffer.getvalue()
    )
    with pytest.raises(ValueError, match=r"shape \(2, 2\), but its part needs"):
        mp.load(tmp_path / "edited.msgm")


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        model.save(tmp_path)
    with pytest.raises(TypeError, match="must be an MSGM or an SGM"):
        model_io.save(model.score, tmp_path / "x.msgm")
    with pytest.raises(FileNotFoundError):
        mp.load(tmp_path / "missing.msgm")


@pytest.mark.parametrize("saved_with_x64", [False, True])
def test_models_load_in_either_x64_mode(data, tmp_path, saved_with_x64):
    """A model saved in one float mode loads in the other, cast to that mode's float type, and
    gives the same log-densities to float32 accuracy."""
    path = tmp_path / "model.msgm"
    x = np.asarray(data[:5], np.float64)
    with jax.enable_x64(saved_with_x64):
        saved = mp.MSGM.build(
            jax.numpy.asarray(data), key=jax.random.key(1), density=mp.ODEDensity(4)
        )
        saved.save(path)
        expected = np.asarray(saved.log_prob(jax.numpy.asarray(x)), np.float64)
    with jax.enable_x64(not saved_with_x64):
        loaded = mp.load(path)
        float_type = jax.numpy.float64 if not saved_with_x64 else jax.numpy.float32
        assert all(
            leaf.dtype == float_type
            for leaf in jax.tree.leaves(eqx.filter(loaded.score, eqx.is_inexact_array))
        )
        log_p = np.asarray(loaded.log_prob(jax.numpy.asarray(x, float_type)), np.float64)
    np.testing.assert_allclose(log_p, expected, atol=1e-3)


def edited_description(model, tmp_path, edit, name="edited.msgm"):
    """A copy of `model`'s file whose description went through `edit` (a function of the dict)."""
    model.save(tmp_path / "model.msgm")
    description = json.loads(zipfile.ZipFile(tmp_path / "model.msgm").read("model.json"))
    edit(description)
    edited_copy(tmp_path / "model.msgm", tmp_path / name, "model.json", json.dumps(description))
    return tmp_path / name


def npy_header(shape, dtype=np.float32) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def test_an_entry_that_inflates_too_much_is_refused_before_it_is_read(model, tmp_path):
    """64 MiB of zeros deflate to about 64 KiB: a 1000-fold ratio, refused from the zip directory."""
    model.save(tmp_path / "model.msgm")
    target = tmp_path / "bomb.msgm"
    with zipfile.ZipFile(tmp_path / "model.msgm") as source:
        entries = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            if name != "arrays/0.npy":
                archive.writestr(name, content)
        with archive.open("arrays/0.npy", "w") as stream:
            stream.write(npy_header((2**24,)))
            for _ in range(64):
                stream.write(bytes(2**20))
    with pytest.raises(ValueError, match=r"bomb.msgm .*inflates \d+-fold"):
        mp.load(target)


def test_array_headers_are_checked_before_the_data_are_read(model, tmp_path):
    """Headers declaring 10^12 floats are refused from the header alone: for a network array,
    against the shape its config implies; for a plain field, against the entry's bytes."""
    model.save(tmp_path / "model.msgm")
    huge = npy_header((10**12,)) + bytes(64)
    edited_copy(tmp_path / "model.msgm", tmp_path / "net.msgm", "arrays/0.npy", huge)
    with pytest.raises(ValueError, match=r"net.msgm .*\(1000000000000,\), but its part needs"):
        mp.load(tmp_path / "net.msgm")
    description = json.loads(zipfile.ZipFile(tmp_path / "model.msgm").read("model.json"))
    index = description["norm_model"]["fields"]["body"]["fields"]["log_density"]["array"]
    edited_copy(tmp_path / "model.msgm", tmp_path / "field.msgm", f"arrays/{index}.npy", huge)
    with pytest.raises(ValueError, match=r"field.msgm .*declares shape \(1000000000000,\)"):
        mp.load(tmp_path / "field.msgm")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("depth", 100_000, r"depth = 100000 is not an int in \[1, 64\]"),
        ("width", -3, r"width = -3 is not an int"),
        ("dim", 10**12, r"dim = 1000000000000 is not an int"),
        ("direction_scale", -1.0, r"`direction_scale` must lie in"),
        ("direction_scale", "8", r"`direction_scale` must be a positive number"),
    ],
)
def test_config_values_are_bounded_before_anything_is_built(model, tmp_path, field, value, match):
    def edit(description):
        config = description["score"]["fields"]["net"]["config"]
        config[field] = value
        if field == "dim":
            description["score"]["fields"]["noise"]["config"]["dim"] = value

    path = edited_description(model, tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        mp.load(path)


def test_a_deeply_nested_description_is_refused(model, tmp_path):
    model.save(tmp_path / "model.msgm")
    nested = (
        '{"format": "msgm_pp.model", "format_version": 3, "x": '
        + "[" * 100_000
        + "]" * 100_000
        + "}"
    )
    edited_copy(tmp_path / "model.msgm", tmp_path / "deep.msgm", "model.json", nested)
    with pytest.raises(ValueError, match=r"deep.msgm .*nested"):
        mp.load(tmp_path / "deep.msgm")
    shallow = '{"format": "msgm_pp.model", "format_version": 3, "x": ' + "[" * 100 + "]" * 100 + "}"
    edited_copy(tmp_path / "model.msgm", tmp_path / "deep100.msgm", "model.json", shallow)
    with pytest.raises(ValueError, match="nested more than 64 levels"):
        mp.load(tmp_path / "deep100.msgm")


def test_a_norm_model_with_a_nan_bandwidth_is_refused(tmp_path):
    model = BUILDERS["dense"]()
    model.save(tmp_path / "model.msgm")
    description = json.loads(zipfile.ZipFile(tmp_path / "model.msgm").read("model.json"))
    index = description["norm_model"]["fields"]["bandwidth"]["array"]
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(np.nan, np.float32))
    edited_copy(
        tmp_path / "model.msgm", tmp_path / "nan.msgm", f"arrays/{index}.npy", buffer.getvalue()
    )
    with pytest.raises(ValueError, match=r"nan.msgm .*finite values"):
        mp.load(tmp_path / "nan.msgm")
