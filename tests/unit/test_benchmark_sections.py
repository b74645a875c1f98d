"""``python -m benchmarks`` is the one benchmark command: the step timings and the
durability figures are its sections ``steps`` and ``durability`` (each builds the
benchmark's own stack from nothing, after the platform's sections)."""

from __future__ import annotations

import subprocess
import sys

from benchmarks import durability_bench, platform_bench, stack_bench
from tests.conftest import REPO, clean_env


def test_the_own_stack_sections_run_after_the_platforms_with_the_shared_options(monkeypatch):
    calls = []
    monkeypatch.setattr(stack_bench, "main", lambda argv: calls.append(("steps", argv)))
    monkeypatch.setattr(durability_bench, "main", lambda argv: calls.append(("durability", argv)))
    monkeypatch.setattr(platform_bench, "_platform_sections", lambda *a: calls.append(("platform", a[1])))
    platform_bench.main(["--sections", "durability,steps", "--runs", "3", "--keep"])
    assert calls == [("steps", ["--runs", "3", "--keep"]), ("durability", ["--keep"])]  # no platform stack
    calls.clear()
    platform_bench.main(["--sections", "bootstrap,latency,steps"])
    assert calls == [("platform", ["bootstrap", "latency"]), ("steps", ["--runs", "10"])]


def test_a_section_that_needs_its_own_stack_is_refused_on_the_current_one():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--on-current-stack", "--sections", "latency,durability"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "durability build the benchmark's own stack" in proc.stderr, proc.stderr


def test_the_benchmark_refuses_a_section_it_does_not_know():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--sections", "latncy"], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown section or case: latncy" in proc.stderr


def test_the_benchmark_writes_its_latest_figures_into_the_docs_block_and_nothing_else(tmp_path):
    """docs/performance.md's benchmark block holds the latest run only (issue: no history
    rows): --write-docs replaces the block and keeps the text around it."""
    spread = platform_bench.Spread(median=1.5, p90=1.9, worst=2.4)
    report = platform_bench.BenchmarkReport(
        started_at="2026-12-02T13:00:00+00:00", stack="p2bench", runs=10,
        machine={"cores": 2, "cpu": "Test CPU", "memory_mib": 24576},
        bootstrap={"from nothing": {s: 1.0 for s in platform_bench.STEP_ORDER} | {"wall": 135.0}},
        latency=[platform_bench.CaseLatency(case="case3-s3-process", worker_settings="stack", runs=10, completed=10,
                                            created_to_pending=spread, pending_to_running=spread,
                                            created_to_running=spread, floor_s=1.2, ratio_to_floor=1.25,
                                            meets_target=True)],
        peak_memory_mib={"p2bench-ec2-0": 812.5}, targets={"created->running <= 1.5 x floor, every case": True})
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Before\n{platform_bench.DOCS_BEGIN}\nold figures\n{platform_bench.DOCS_END}\n## After\n")
    platform_bench.write_docs(report, doc)
    text = doc.read_text()
    assert text.startswith("# Before\n") and text.endswith(f"{platform_bench.DOCS_END}\n## After\n")
    assert "old figures" not in text
    assert "Measured 2026-12-02 by `python -m benchmarks` on 2 cores (Test CPU, 24 GiB)" in text
    assert "| case3-s3-process | stack | 1.50 | 1.50 | 1.50, 1.90, 2.40 | 1.20 | 1.25 | met |" in text
    assert "| p2bench-ec2-0 | 812.5 |" in text and "| 135.0 |" in text
    # The real page has the block, once.
    real = platform_bench.DOCS.read_text()
    assert real.count(platform_bench.DOCS_BEGIN) == 1 and real.count(platform_bench.DOCS_END) == 1
