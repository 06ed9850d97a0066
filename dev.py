"""Set-up and entry points that need nothing but python3.

    python3 dev.py demo   # create .venv if needed, install msgm_pp, run `msgm-pp demo`
    python3 dev.py test   # same set-up, then run the whole test suite
    python3 dev.py lint   # same set-up, then ruff check and ruff format --check
    python3 dev.py minimum  # a separate .venv-minimum with every dependency at its declared floor,
                            # then the smoke test `msgm-pp demo --fast`
    python3 dev.py docs   # same set-up as test, then the API reference (pdoc) in docs/api/

Extra arguments are passed on (`python3 dev.py demo --fast`, `python3 dev.py test -k noise`).
The virtual environment is rebuilt when pyproject.toml changes.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".msgm_pp-install-stamp"


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_environment() -> None:
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    if not (BIN / "python").exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(_fingerprint())


def floors() -> list[str]:
    """The runtime dependencies pinned at the lower bounds that pyproject.toml declares."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [requirement.replace(">=", "==") for requirement in declared]
    jax = next(p for p in pinned if p.startswith("jax=="))
    return [*pinned, jax.replace("jax==", "jaxlib==")]


def minimum_versions(rest: list[str]) -> int:
    environment = ROOT / ".venv-minimum"
    python = environment / BIN.name / "python"
    print(f"creating {environment} with {' '.join(floors())}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, *floors()], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    with tempfile.TemporaryDirectory() as output:
        demo = [str(environment / BIN.name / "msgm-pp"), "demo", "--fast", "--output", output]
        return subprocess.run([*demo, *rest], cwd=ROOT).returncode


def public_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "msgm_pp").glob("*.py") if not p.stem.startswith("_"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "lint", "minimum", "docs"}:
        print(__doc__)
        return 2
    if argv[0] == "minimum":
        return minimum_versions(argv[1:])
    ensure_environment()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return subprocess.run([str(BIN / "msgm-pp"), "demo", *rest], cwd=ROOT).returncode
    if command == "docs":
        modules = ["msgm_pp", *(f"msgm_pp.{path.stem}" for path in public_modules())]
        pdoc = [str(BIN / "pdoc"), "--output-directory", str(ROOT / "docs" / "api"), *modules]
        return subprocess.run([*pdoc, *rest], cwd=ROOT).returncode
    if command == "lint":
        ruff = str(BIN / "ruff")
        checked = subprocess.run([ruff, "check", *rest], cwd=ROOT).returncode
        return checked or subprocess.run([ruff, "format", "--check", *rest], cwd=ROOT).returncode
    # One worker per core (at most 4). Work stealing keeps the workers busy to the end: each
    # starts on a contiguous share of the tests (so a file's fitted models are mostly built
    # once), and an idle worker takes tests from the others' remaining ones.
    parallel = ["--numprocesses=auto", "--maxprocesses=4", "--dist=worksteal"]
    pytest = [str(BIN / "python"), "-m", "pytest", *parallel, *rest]
    return subprocess.run(pytest, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
