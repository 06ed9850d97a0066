import json

from msgm_pp.cli import main


def test_demo_fast_runs_end_to_end(tmp_path, capsys):
    """`msgm-pp demo --fast` fits both models, prints the table and writes the report and plots.
    The MSGM's sample norms follow its KDE+GPD norm model, so their Hill tail index is that of the
    data (1) within 0.4, 4 standard errors at k = 100, however short the training."""
    assert main(["demo", "--fast", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    results = report["results"]
    assert set(results) == {"MSGM", "SGM", "fresh data"}
    for name in ("MSGM", "SGM"):
        assert results[name]["log_prob_mean_abs_error"] >= 0
        assert 0 <= results[name]["sqrt_mmd"] < 1
    assert abs(results["MSGM"]["norm_tail_index_hill"] - 1.0) < 0.4
    for plot in ("pair_plot.png", "survival.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    output = capsys.readouterr().out
    assert "√MMD" in output and "fresh data" in output
