"""Every public name is documented, and the API reference builds offline."""

import inspect
import pkgutil

import pdoc
import pytest

import msgm_pp as mp

# Protocols documented once, where they are defined: saving (msgm_pp.serialization) and pytrees.
PROTOCOL_METHODS = {"config", "from_config", "tree_flatten", "tree_unflatten"}


def public_members(cls):
    for name in dir(cls):
        if name.startswith("_") or name in PROTOCOL_METHODS:
            continue
        static = inspect.getattr_static(cls, name)
        function = (
            static.fget if isinstance(static, property) else getattr(static, "__func__", static)
        )
        if callable(function) and (getattr(function, "__module__", "") or "").startswith("msgm_pp"):
            yield name, static


def documentation(cls, name, static) -> str:
    if not isinstance(static, property):
        return inspect.getdoc(getattr(cls, name)) or ""
    for base in cls.__mro__:
        inherited = base.__dict__.get(name)
        if isinstance(inherited, property) and inherited.__doc__:
            return inherited.__doc__
    return ""


def test_every_public_name_and_method_has_a_docstring():
    undocumented = []
    for name in mp.__all__:
        obj = getattr(mp, name)
        if not inspect.isclass(obj):
            if callable(obj) and not inspect.getdoc(obj):
                undocumented.append(name)
            continue
        if not inspect.getdoc(obj):
            undocumented.append(name)
        undocumented += [
            f"{name}.{member}"
            for member, static in public_members(obj)
            if not documentation(obj, member, static).strip()
        ]
    assert undocumented == []


@pytest.mark.parametrize("model", [mp.MSGM, mp.SGM])
def test_help_shows_our_sample_and_log_prob(model):
    assert inspect.getdoc(model.sample).startswith("Draws of shape sample_shape + event_shape")
    assert inspect.getdoc(model.log_prob).startswith("log p(x)")


def test_the_api_reference_builds_offline(tmp_path):
    """What `python3 dev.py docs` builds: the package and each public module, with pdoc."""
    modules = [f"msgm_pp.{m.name}" for m in pkgutil.iter_modules(mp.__path__) if m.name[0] != "_"]
    pdoc.pdoc("msgm_pp", *modules, output_directory=tmp_path)
    index = (tmp_path / "msgm_pp.html").read_text()
    for name in mp.__all__:
        assert name in index, name
    assert "y = (x − loc)/scale" in (tmp_path / "msgm_pp" / "coordinates.html").read_text()
