"""Every tutorial notebook runs end to end in its fast mode (MSGM_PP_FAST=1: small training
budgets), in a fresh kernel, with the working directory in a temporary folder."""

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
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError, naming the failing cell, on any error
