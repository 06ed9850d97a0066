import json

from msgm_pp.cli import main


def test_demo_fast_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--fast", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert abs(report["latent"]["tail_index"] - 1.0) < 0.3
    assert report["latent"]["data_direction_z"] > 20
    for name, result in report["forward"].items():
        assert result["direction_z"] < 4.5, name
        assert result.get("max_relative_norm_change", 0.0) < 1e-5
    assert "sample-steps/s" in capsys.readouterr().out
