"""The smoke step: run the testflow in every runbook case, wait for each, check each
result (`finished FIRST`, `finished SECOND`), and publish a table with per-case times."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from flows.deploy import stage
from stack import platform, smoke
from stack.proc import StackError
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings


class SmokeReport(BaseModel):
    cases: list[dict]
    ok: bool
    health_only: bool = False   # a health check stood in for the cases (nothing had changed)


@flow(name="smoke")
@exclusive
def smoke_test(settings: StackSettings | None = None, platform_url: str | None = None) -> SmokeReport:
    """Prove every way of running the testflow works on the platform."""
    settings = settings or load_settings()
    log = get_run_logger()
    url = platform_url or platform.operator_api_url(settings)
    platform.wait_ready(settings, url)
    deploy_dir = stage(settings)

    # Every case at once: each has its own worker (or none, for the direct run), so the
    # step takes as long as its slowest case instead of their sum (about 40 s less).
    with ThreadPoolExecutor(max_workers=4) as pool:
        direct = pool.submit(smoke.run_direct, settings, url, deploy_dir)
        on_hosts = [pool.submit(smoke.run_case, settings, url, case, smoke.CASE_DEPLOYMENTS[case])
                    for case in ("case3-s3-process", "case4-s3-docker")]
        misplaced = pool.submit(smoke.run_case, settings, url, "misplaced-local-storage", smoke.MISPLACED,
                                expect_failure=True)
        with smoke.operator_worker(settings, url, deploy_dir):
            case2 = smoke.run_case(settings, url, "case2-local-storage", smoke.CASE_DEPLOYMENTS["case2-local-storage"])
        results = [direct.result(), case2, *(f.result() for f in on_hosts), misplaced.result()]

    rows = []
    for r in results:
        rows.append({
            "case": r.case, "state": r.state, "ok": r.ok,
            "created_to_running_s": r.created_to_running, "running_to_completed_s": r.running_to_completed,
            "logs_wait_s": r.logs_wait,
            "note": "; ".join(r.problems) or r.explanation,
        })
        (log.info if r.ok else log.error)("%s: %s %s", r.case, r.state, "; ".join(r.problems) or r.explanation)
    create_table_artifact(key=f"{settings.name_prefix}-smoke", table=rows, description="Testflow cases on the platform")
    failed = [r for r in results if not r.ok]
    if failed:
        raise StackError("smoke failed: " + "; ".join(f"{r.case}: {', '.join(r.problems)}" for r in failed))
    return SmokeReport(cases=rows, ok=True)


@flow(name="health-check")
def health_check(settings: StackSettings, platform_url: str, worker_hosts: list[str]) -> SmokeReport:
    """What bootstrap checks instead of the full smoke when nothing changed: the platform
    API answers and every worker host's process and Docker workers are online."""
    log = get_run_logger()
    if not platform.ready(settings, platform_url):
        raise StackError(f"health check: the platform API at {platform_url} is not ready; "
                         "run python -m flows.bootstrap --from configure")
    online = asyncio.run(smoke.workers_online(settings, platform_url, worker_hosts))
    rows = [{"case": f"worker {name}", "ok": up, "state": "ONLINE" if up else "OFFLINE"} for name, up in online.items()]
    create_table_artifact(key=f"{settings.name_prefix}-smoke", table=rows, description="Health check of the platform")
    offline = [name for name, up in online.items() if not up]
    if offline:
        raise StackError(f"health check: workers offline: {', '.join(offline)}; "
                         "run python -m flows.bootstrap --from configure")
    log.info("health check: platform ready, %d workers online", len(rows))
    return SmokeReport(cases=rows, ok=True, health_only=True)


if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.smoke", __doc__)
    main(lambda s: smoke_test(s))
