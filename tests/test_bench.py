"""`just bench` runs and writes its table (how fast is the benchmark's business, not a test's)."""

import json

from minitrain.tools import bench


def test_bench_runs_and_writes_results(tmp_path):
    result = bench.run(repeats=1, steps=8, out_dir=tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"].keys() == {"phase-19", "larger", "baby"} and saved == result
    for row in result["models"].values():
        assert row["tokens_per_s_reference"] > 0 and row["adamw_step_ms"] > 0
        assert row["whole_set_eval_ms"] > 0 and row["tokens_per_s_logs"] > 0
    baby = result["models"]["baby"]
    assert baby["rows"] == "packed" and baby["mean_row_length"] == 64  # no padding
    assert "| tokens_per_s_full |" in (tmp_path / "results.md").read_text()
