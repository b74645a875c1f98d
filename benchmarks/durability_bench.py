"""Figures of bootstrap's step keys and of the platform's two lifetimes (a benchmark,
not a test): run it, read the numbers.

    .venv/bin/python -m benchmarks --sections durability [--keep]
    (alone, with its own options: python -m benchmarks.durability_bench [--runs 100])

It uses its own stack (prefix p2bench, state .stack-bench, ports 4866/4800/4801) from
nothing, so it never touches yours; images are built beforehand (not timed). Measured,
each as a user runs it (``python -m flows...`` in a subprocess):
  1. bootstrap from nothing, per step;
  2. a second bootstrap with nothing changed, per step (target: at most 15 s);
  3. a bootstrap after one playbook changed (in a copy of the repository), per step
     (target: at most configure's own time plus 15 s);
  4. --runs runs of case3-s3-process, then backup and restore: time and size;
  5. teardown (compute; the data is kept) and the bootstrap that brings it back,
     against bootstrap from nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack.steps import STEPS
from stack.settings import REPO_ROOT

# The benchmark stack's settings (prefix, state directory, ports): one place for both benchmarks.
from benchmarks.platform_bench import BENCH_ENV  # noqa: E402
STEP_ORDER = STEPS  # stack/steps.py holds the one list


def step(module: str, *args: str, cwd: Path = REPO_ROOT) -> tuple[dict | list, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")} | BENCH_ENV
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"python -m {module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return (json.loads(proc.stdout) if proc.stdout.strip() else {}), seconds


def per_step(report: dict) -> dict[str, tuple[str, float]]:
    return {s["step"]: (s["outcome"], s["seconds"]) for s in report["steps"]}


def many_runs(settings, count: int, wave: int = 10) -> float:
    """``count`` runs of case3-s3-process, submitted ``wave`` at a time (one worker host
    has no run limit: 100 flow processes at once would need ~12 GB); wall seconds until
    all are final."""
    from prefect.deployments import run_deployment

    from stack import platform
    from stack.smoke import CASE_DEPLOYMENTS, wait_final

    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL,
                                  temporary_settings)

    from stack import tls

    url = platform.api_url(settings)
    started = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: platform.auth_string(settings),
                                     PREFECT_API_SSL_CERT_FILE: str(tls.ca_file(settings))}):
        for first in range(0, count, wave):
            ids = [run_deployment(CASE_DEPLOYMENTS["case3-s3-process"], timeout=0).id
                   for _ in range(min(wave, count - first))]

            async def wait_all(ids=ids):
                for run_id in ids:
                    await wait_final(settings, url, run_id)

            asyncio.run(wait_all())
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks --sections durability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="flow runs before the backup (default 100)")
    parser.add_argument("--keep", action="store_true", help="leave the benchmark stack up")
    args = parser.parse_args(argv)
    from stack.settings import load_settings

    os.environ.update(BENCH_ENV)
    settings = load_settings()
    out: list[str] = []

    step("flows.teardown", "--all", "--yes")
    first, t_first = step("flows.bootstrap")
    second, t_second = step("flows.bootstrap")
    with tempfile.TemporaryDirectory(prefix="stack-bench-repo-") as copy:
        shutil.copytree(REPO_ROOT, copy, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".venv", ".stack*", ".git", "__pycache__"))
        role_defaults = Path(copy, "ansible/roles/base_system/defaults/main.yml")
        role_defaults.write_text(role_defaults.read_text() + "# changed by the benchmark\n")
        changed, t_changed = step("flows.bootstrap", cwd=Path(copy))
    out.append("bootstrap, per step (s)     " + "".join(f"{s:>11}" for s in STEP_ORDER) + "      wall")
    for label, report, wall in (("from nothing", first, t_first), ("nothing changed", second, t_second),
                                ("a playbook changed", changed, t_changed)):
        steps = per_step(report)
        cells = "".join(f"{steps[s][1]:>7.1f} {steps[s][0][:3]:>3}" for s in STEP_ORDER)
        out.append(f"  {label:<25}{cells}  {wall:8.1f}")
    configure_s = per_step(changed)["configure"][1]
    out += [f"  targets: nothing changed {t_second:.1f} s (<= 15 s); playbook changed {t_changed:.1f} s "
            f"(<= configure {configure_s:.1f} + 15 = {configure_s + 15:.1f} s)", ""]
    print("\n".join(out), flush=True)
    out = []

    runs_s = many_runs(settings, args.runs)
    backup, t_backup = step("flows.backup")
    restored, t_restore = step("flows.restore")
    out += [f"{args.runs} runs of case3-s3-process, 10 at a time: all final in {runs_s:.1f} s",
            f"  backup   {t_backup:6.1f} s  {backup['size'] / 1e6:6.2f} MB  {backup['location']}",
            f"  restore  {t_restore:6.1f} s  ({restored['backup']['name']})", ""]
    print("\n".join(out), flush=True)
    out = []

    down, t_down = step("flows.teardown")
    back, t_back = step("flows.bootstrap")
    out += ["two lifetimes",
            f"  teardown (compute, backup first)         {t_down:7.1f} s",
            f"  bootstrap after it (data kept)           {t_back:7.1f} s   restore: {back['restore']['reason'] or 'restored'}",
            f"  teardown + bootstrap                     {t_down + t_back:7.1f} s",
            f"  bootstrap from nothing                   {t_first:7.1f} s"]
    if not args.keep:
        step("flows.teardown", "--all", "--yes", "--emulator")
        step("flows.controlplane", "stop")
    print("\n".join(out))


if __name__ == "__main__":
    main()
