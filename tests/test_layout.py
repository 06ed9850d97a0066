"""The package's imports flow one way: each module imports only modules of lower layers."""

import ast
from pathlib import Path

import msgm_pp

LAYERS = [
    {"_version"},
    {"_checks", "_progress", "serialization", "sphere", "heun", "devices"},
    {"heat_kernel", "schedule", "coordinates"},
    {"noise", "norm_models", "nets"},
    {"latent", "score"},
    {"forward"},
    {"losses", "training", "samplers", "density"},
    {"score_based"},
    {"msgm", "sgm"},
    {"smc", "twists"},
    {"split_gibbs"},
    {"metrics", "datasets", "diagnostics", "posterior"},
    {"plots"},
    {"__init__"},
    {"cli"},
]
RANK = {module: rank for rank, layer in enumerate(LAYERS) for module in layer}
PACKAGE = Path(msgm_pp.__file__).parent


def package_imports(path: Path) -> set[str]:
    """The msgm_pp modules that `path` imports anywhere, lazy imports inside functions included."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("msgm_pp"):
            if node.module == "msgm_pp":
                imported.update(alias.name for alias in node.names)
            else:
                imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported.update(
                alias.name.split(".")[1] if "." in alias.name else "__init__"
                for alias in node.names
                if alias.name.startswith("msgm_pp")
            )
    return imported


def test_every_module_has_a_layer():
    assert {path.stem for path in PACKAGE.glob("*.py")} == set(RANK)


def test_imports_only_go_to_lower_layers():
    upward = [
        f"{path.stem} (layer {RANK[path.stem]}) imports {name} (layer {RANK[name]})"
        for path in sorted(PACKAGE.glob("*.py"))
        for name in package_imports(path)
        if name in RANK and RANK[name] >= RANK[path.stem]
    ]
    assert upward == []


def test_serialization_names_no_class_of_the_package():
    assert package_imports(PACKAGE / "serialization.py") == {"_version"}
