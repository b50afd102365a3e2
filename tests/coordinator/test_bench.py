"""The benchmark runner finds bench modules, and the coordinator benchmark runs end to end at a tiny size."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(120)


def test_runner_discovers_bench_modules_and_refuses_unknown_names(capsys):
    from bench.__main__ import discover, run

    assert "coordinator" in discover()
    assert run(["no_such_bench"]) == 2
    assert "available:" in capsys.readouterr().err


def test_coordinator_benchmark_small_run_audits_clean(tmp_path):
    from bench.coordinator import main

    out = tmp_path / "coordinator.json"
    code = main(["--peers", "40", "--clients", "1", "--window", "4", "--duration", "1", "--floor", "0.3",
                 "--store-seconds", "0.2", "--chunks", "100", "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0, result
    assert result["lost"] == 0 and result["double_counted"] == 0 and result["ops"] > 0
    assert result["register"]["ops"] == 40 and not result["register"]["errors"]
    assert result["coordinator_stopped_cleanly"] and not result["errors"]
    assert {"ops_per_s", "p50_ms", "p99_ms"} <= result.keys()
    assert {"lease", "heartbeat", "report"} <= result["by_kind"].keys()
