"""Timing figures of the stack (a benchmark, not a test): run it, read the numbers.

    .venv/bin/python -m benchmarks --sections steps [--runs 5] [--keep]
    (alone, with its own options: python -m benchmarks.stack_bench [--skip-latency] [--skip-stock])

It builds its own stack (prefix p2bench, state .stack-bench, ports 4866/4800/4801) from
nothing, so it never touches yours, and measures:
  1. provision, first run and second run with nothing changed (wall time, terraform processes);
  2. hosts + configure, first and second run;
  2b. (unless --skip-stock) hosts + configure of new hosts that boot the stock image
     (STACK_HOST_IMAGE=stock, what a stock AMI is: configure installs everything over
     SSH) beside the baked one;
  3. per testflow case, over --runs runs: created-to-running and created-to-completed
     (median and worst).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from stack import controlplane, platform, smoke
from stack.settings import REPO_ROOT, StackSettings


def bench_settings() -> StackSettings:
    return StackSettings(name_prefix="p2bench", state_dir=Path(REPO_ROOT / ".stack-bench"),
                         emulator_port=4866, control_plane_port=4800, platform_port=4801, load_balancer_port=4802,
                         nightly_teardown_cron="")


def timed(fn, *args):
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


def latency(settings: StackSettings, runs: int) -> list[tuple[str, list[smoke.CaseResult]]]:
    from flows.deploy import stage

    url = platform.operator_api_url(settings)
    deploy_dir = stage(settings)
    out = [("case1-direct", [smoke.run_direct(settings, url, deploy_dir) for _ in range(runs)])]
    with smoke.operator_worker(settings, url, deploy_dir):
        out.append(("case2-local-storage", [smoke.run_case(settings, url, "case2-local-storage",
                                                           smoke.CASE_DEPLOYMENTS["case2-local-storage"])
                                            for _ in range(runs)]))
    for case in ("case3-s3-process", "case4-s3-docker"):
        out.append((case, [smoke.run_case(settings, url, case, smoke.CASE_DEPLOYMENTS[case]) for _ in range(runs)]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks --sections steps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per testflow case (default 5)")
    parser.add_argument("--skip-latency", action="store_true", help="only provision and configure figures")
    parser.add_argument("--keep", action="store_true", help="leave the benchmark stack up")
    parser.add_argument("--skip-stock", action="store_true", help="no figures of stock hosts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from flows.configure import configure
    from flows.deploy import deploy
    from flows.hosts import hosts
    from flows.preflight import preflight
    from flows.provision import provision
    from flows.register import register
    from flows.teardown import teardown

    settings = bench_settings()
    lines: list[str] = []
    with controlplane.client_settings(settings):
        teardown(settings, destroy_data=True)  # from nothing
        preflight(settings)
        first, t1 = timed(provision, settings)
        second, t2 = timed(provision, settings)
        lines += ["provision            wall s   terraform processes   applied",
                  f"  first run        {t1:8.1f}   {first.terraform_processes:19d}   {first.applied}",
                  f"  second run       {t2:8.1f}   {second.terraform_processes:19d}   {second.applied}",
                  f"  second / first   {t2 / t1:8.0%}", ""]

        (_, h1), (c1, k1) = timed(hosts, settings), timed(configure, settings)
        (_, h2), (c2, k2) = timed(hosts, settings), timed(configure, settings)
        lines += ["hosts + configure    hosts s  configure s  total s  changed",
                  f"  first run        {h1:7.1f}  {k1:11.1f}  {h1 + k1:7.1f}  {c1.changed}",
                  f"  second run       {h2:7.1f}  {k2:11.1f}  {h2 + k2:7.1f}  {c2.changed}",
                  f"  second / first   {(h2 + k2) / (h1 + k1):7.0%}", ""]

        if not args.skip_latency:
            register(settings)
            deploy(settings)
            lines += [f"flow-run latency over {args.runs} runs (s)   created->pending median   "
                      "created->running median/worst   created->completed median/worst   ok"]
            for case, results in latency(settings, args.runs):
                c2p = [r.created_to_pending or 0.0 for r in results]
                c2r = [r.created_to_running or 0.0 for r in results]
                total = [(r.created_to_running or 0.0) + (r.running_to_completed or 0.0) for r in results]
                lines.append(f"  {case:<22} {statistics.median(c2p):8.2f}   {statistics.median(c2r):14.2f} / {max(c2r):5.2f}   "
                             f"{statistics.median(total):21.2f} / {max(total):5.2f}   "
                             f"{sum(r.ok for r in results)}/{len(results)}")
        if not args.skip_stock:
            # New hosts of the stock image: provision replaces the instances (as a new AMI
            # would), then hosts and configure as above.
            stock = settings.model_copy(update={"host_image": "stock"})
            provision(stock)
            (_, h3), (c3, k3) = timed(hosts, stock), timed(configure, stock)
            lines += ["", "new hosts by image  hosts s  configure s  total s  changed",
                      f"  baked            {h1:7.1f}  {k1:11.1f}  {h1 + k1:7.1f}  {c1.changed}",
                      f"  stock            {h3:7.1f}  {k3:11.1f}  {h3 + k3:7.1f}  {c3.changed}"]
        if not args.keep:
            teardown(settings, destroy_data=True, stop_emulator=True)
    if not args.keep:
        controlplane.stop(settings)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
