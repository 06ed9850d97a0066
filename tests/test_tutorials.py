"""Every tutorial notebook runs end to end in its fast mode (MSGM_PP_FAST=1: small training
budgets), in a fresh kernel, with the working directory in a temporary folder."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_runs_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MSGM_PP_FAST", "1")
    # A fast mode compiles far more than it computes, and XLA's lowest backend optimisation level
    # compiles fastest: the four notebooks took 202 s against 258 s at the level 2 that
    # tests/conftest.py sets for the other tests (one core each, side by side). Notebooks only:
    # compute-heavy tests ran up to 10× slower at level 0.
    flags = [
        flag
        for flag in os.environ.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_backend_optimization_level")
    ]
    monkeypatch.setenv("XLA_FLAGS", " ".join([*flags, "--xla_backend_optimization_level=0"]))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError, naming the failing cell, on any error
