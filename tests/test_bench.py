"""`just bench` runs and writes its table (how fast is the benchmark's business, not a test's)."""

import json

from minitrain.tools import bench


def test_bench_runs_and_writes_results(tmp_path):
    result = bench.run(repeats=1, steps=8, out_dir=tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"].keys() == {"phase-19", "larger"} and saved == result
    for row in result["models"].values():
        assert row["tokens_per_s_reference"] > 0 and row["adamw_step_ms"] > 0
        # the logs-only cost split: its two whole-set evaluations were timed, and taking
        # their time out leaves a per-step cost no larger than the whole
        assert row["whole_set_eval_ms"] > 0 and 0 < row["logs_only_eval_share"] < 1
        assert row["instrumentation_cost_per_step_logs"] <= \
            row["instrumentation_cost_logs_only"]
        assert 0 < row["per_step_logs_share_timed"] < 1  # the writers were timed
    assert "| tokens_per_s_full |" in (tmp_path / "results.md").read_text()
