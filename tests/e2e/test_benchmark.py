"""The benchmark is not a test, but it must not rot: one case at --runs 2 against the
shared stack, and its JSON read back through the report's schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.platform_bench import BenchmarkReport
from tests.conftest import REPO, TEST_STACK_ENV, clean_env

pytestmark = pytest.mark.e2e


def test_one_case_of_the_benchmark_runs_and_its_json_has_the_schema(stack):
    s = stack["settings"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--on-current-stack", "--sections", "latency,memory",
         "--cases", "case3-s3-process", "--runs", "2"],
        cwd=REPO, env=clean_env(**TEST_STACK_ENV), capture_output=True, text=True, timeout=900,
        stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "case3-s3-process" in proc.stdout and "floor" in proc.stdout
    raw = json.loads((s.state_path / "benchmark.json").read_text())
    report = BenchmarkReport.model_validate(raw)
    assert set(raw) == set(BenchmarkReport.model_fields)  # nothing missing, nothing unknown
    [case] = report.latency
    assert (case.case, case.worker_settings, case.runs, case.completed) == ("case3-s3-process", "stack", 2, 2)
    assert 0 < case.created_to_pending.median <= case.created_to_running.median <= case.created_to_running.worst
    assert case.floor_s and case.floor_s > 0.2  # a cold interpreter importing Prefect takes real time
    assert case.ratio_to_floor == round(case.created_to_running.median / case.floor_s, 2)
    assert {"p2test-ec2-0", "p2test-ec2-1", "p2test-aws"} <= set(report.peak_memory_mib)
    assert all(v > 0 for v in report.peak_memory_mib.values())
    assert report.bootstrap == {} and report.throughput == []
