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
