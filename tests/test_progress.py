"""Progress feedback: a bar in terminals and notebooks, a periodic line in logs, nothing in CI."""

import sys

import jax
import numpy as np
import pytest

import msgm_pp as mp
from msgm_pp import _progress, score_based


@pytest.fixture
def outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("MSGM_PP_PROGRESS", raising=False)


def test_the_mode_follows_where_the_output_goes(outside_ci, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert _progress.progress_mode(None) == "log"
    assert _progress.progress_mode(True) == "bar"
    assert _progress.progress_mode(False) == "off"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert _progress.progress_mode(None) == "bar"
    monkeypatch.setenv("CI", "true")
    assert _progress.progress_mode(None) == "off"
    monkeypatch.delenv("CI")
    monkeypatch.setenv("MSGM_PP_PROGRESS", "0")
    assert _progress.progress_mode(None) == "off"


def test_a_log_gets_periodic_lines_with_the_losses(outside_ci, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 0.0)
    data = np.random.default_rng(0).standard_cauchy((300, 3))
    mp.SGM.fit(data, key=jax.random.key(0), max_steps=40, eval_every=20)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["training: 20/40", "training: 40/40"]
    assert "validation=" in lines[-1]


def test_a_draw_of_several_chunks_reports_each_chunk(outside_ci, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 0.0)
    monkeypatch.setattr(score_based, "_CHUNK_BUDGET", 3 * 40)
    data = np.random.default_rng(0).standard_cauchy((300, 3))
    model = mp.SGM.build(data, key=jax.random.key(0)).with_options(sampler=mp.SDESampler(4))
    model.sample(jax.random.key(1), (100,))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "sampling: 40/100",
        "sampling: 80/100",
        "sampling: 100/100",
    ]


def test_ci_gets_no_progress(monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 0.0)
    data = np.random.default_rng(0).standard_cauchy((300, 3))
    mp.SGM.fit(data, key=jax.random.key(0), max_steps=20, eval_every=10)
    assert capsys.readouterr().err == ""
