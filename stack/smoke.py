"""Running the testflow cases on the platform and checking what they did.

Shared by the smoke flow (one run per case) and the latency benchmark (many runs).
Each case ends in a :class:`CaseResult` with its timings and the checks it passed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from stack import platform
from stack.proc import StackError, get_logger, redact
from stack.settings import StackSettings

TESTFLOW = "concurrent-flows"
EXPECTED_RESULTS = ("finished FIRST", "finished SECOND")
DOCKER_CASE = "case4-s3-docker"  # the one on the Docker pool, with the flow-runner image
CASE_DEPLOYMENTS = {
    "case2-local-storage": f"{TESTFLOW}/case2-local-storage",
    "case3-s3-process": f"{TESTFLOW}/case3-s3-process",
    DOCKER_CASE: f"{TESTFLOW}/{DOCKER_CASE}",
}
MISPLACED = f"{TESTFLOW}/misplaced-local-storage"
RUN_TIMEOUT_SECONDS = 300
LOG_WAIT_SECONDS = 15
LOG_LINES_ON_FAILURE = 5
# A clean stop takes 0.4 s on a quiet machine; every run the worker took has ended by then.
OPERATOR_WORKER_STOP_GRACE_SECONDS = 1


@dataclass
class CaseResult:
    case: str
    flow_run_id: str
    state: str
    ok: bool
    created_to_pending: float | None = None   # until a worker picked it up
    created_to_running: float | None = None
    running_to_completed: float | None = None
    logs_wait: float | None = None            # after the final state, until its logs had arrived
    problems: list[str] = field(default_factory=list)
    explanation: str = ""


def _seconds(a, b) -> float | None:
    return round((b - a).total_seconds(), 2) if a and b else None


async def inspect_run(settings: StackSettings, url: str, case: str, run_id: UUID,
                      expect_failure: bool = False) -> CaseResult:
    """Read a finished run back: state, timings, its subflows and the printed results."""
    async with platform.prefect_client(settings, url) as client:
        fr = await client.read_flow_run(run_id)
        states = await client.read_flow_run_states(run_id)
        pending = next((st.timestamp for st in states if st.type.value == "PENDING"), None)
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
        # Logs are shipped in batches and may land after the final state: wait for them.
        waited_from = time.monotonic()
        deadline = waited_from + LOG_WAIT_SECONDS
        while True:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
            text = "\n".join(log.message for log in logs)
            if expect_failure or all(e in text for e in EXPECTED_RESULTS) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        logs_wait = round(time.monotonic() - waited_from, 2)
        pull_dirs = []
        if expect_failure and fr.deployment_id:
            dep = await client.read_deployment(fr.deployment_id)
            pull_dirs = [step["prefect.deployments.steps.set_working_directory"]["directory"]
                         for step in (dep.pull_steps or []) if "prefect.deployments.steps.set_working_directory" in step]
    state = fr.state.type.value if fr.state else "UNKNOWN"
    result = CaseResult(case=case, flow_run_id=str(run_id), state=state, ok=False,
                        created_to_pending=_seconds(fr.created, pending),
                        created_to_running=_seconds(fr.created, fr.start_time),
                        running_to_completed=_seconds(fr.start_time, fr.end_time),
                        logs_wait=logs_wait)
    if expect_failure:
        if state == "COMPLETED":
            result.problems.append("expected a failure: local storage should not be reachable from the worker host")
        else:
            result.explanation = explain_misplaced(text, pull_dirs)
        result.ok = not result.problems
        return result
    if state != "COMPLETED":
        result.problems.append(f"run ended {state}: {fr.state.message if fr.state else ''}")
        # The run's last log lines say why (a Docker run's container is removed with its output).
        last = [line for line in text.splitlines() if line.strip()][-LOG_LINES_ON_FAILURE:]
        result.problems.append("its last log lines: " + (redact(" | ".join(last), [platform.auth_string(settings)])
                                                         if last else "none"))
    done_children = sorted(c.state.type.value for c in children if c.state)
    if done_children != ["COMPLETED", "COMPLETED"]:
        result.problems.append(f"expected two completed testflow subflows, got {done_children}")
    for expected in EXPECTED_RESULTS:
        if expected not in text:
            result.problems.append(f"'{expected}' not in the run's logs")
    result.ok = not result.problems
    return result


def explain_misplaced(log_text: str, pull_dirs: list[str]) -> str:
    """Why a local-storage deployment fails on a remote worker, in plain words."""
    worker = re.search(r"Worker '([^']+)' submitting", log_text)
    where = f"worker {worker.group(1)}" if worker else "the remote worker"
    folder = pull_dirs[0] if pull_dirs else "a folder on the operator machine"
    if "set_working_directory" in log_text or "FileNotFoundError" in log_text:
        return (f"failed as expected: the deployment uses local storage ({folder}), which exists only on "
                f"the operator machine, not on the host of {where}. Remote workers need the code in S3 "
                "(case 3) or in an image (case 4).")
    return f"failed as expected, but not at its pull step: check the run on {where}"


async def run_deployment_once(settings: StackSettings, url: str, deployment: str) -> UUID:
    async with platform.prefect_client(settings, url) as client:
        dep = await client.read_deployment_by_name(deployment)
        fr = await client.create_flow_run_from_deployment(dep.id)
    return fr.id


async def wait_final(settings: StackSettings, url: str, run_id: UUID, timeout: float = RUN_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    async with platform.prefect_client(settings, url) as client:
        while time.monotonic() < deadline:
            fr = await client.read_flow_run(run_id)
            if fr.state and fr.state.is_final():
                return
            await asyncio.sleep(0.5)
    raise StackError(f"flow run {run_id} did not finish within {timeout:.0f} s; is a worker polling its pool?")


def run_case(settings: StackSettings, url: str, case: str, deployment: str, expect_failure: bool = False) -> CaseResult:
    async def go() -> CaseResult:
        run_id = await run_deployment_once(settings, url, deployment)
        await wait_final(settings, url, run_id)
        return await inspect_run(settings, url, case, run_id, expect_failure)

    return asyncio.run(go())


def run_direct(settings: StackSettings, url: str, deploy_dir: Path) -> CaseResult:
    """Case 1: the testflow run on the operator machine against the platform API."""
    code = ("import json; from testflow import concurrent_flows; "
            "s = concurrent_flows(return_state=True); print(json.dumps({'id': str(s.state_details.flow_run_id)}))")
    env = {**os.environ, **platform.client_env(settings, url), "PREFECT_LOGGING_LOG_PRINTS": "true"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=deploy_dir, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_SECONDS)
    if proc.returncode != 0:
        tail = redact(proc.stderr[-1500:], [platform.auth_string(settings)])
        raise StackError(f"case 1 (direct run) failed: {tail}")
    run_id = UUID(json.loads(proc.stdout.strip().splitlines()[-1])["id"])
    return asyncio.run(inspect_run(settings, url, "case1-direct", run_id))


@contextmanager
def operator_worker(settings: StackSettings, url: str, deploy_dir: Path, query_seconds: float = 0.5):
    """A process worker on the operator machine for case 2, for as long as the block runs
    (polling every ``query_seconds``: the stack's 0.5 s, or Prefect's default 10 s for
    the benchmark's default row)."""
    log_path = settings.state_path / "operator-worker.log"
    venv_bin = str(Path(sys.executable).parent)
    # PATH: the pool starts flow runs with `python -m prefect.engine`, this virtualenv's Python.
    env = {**os.environ, **platform.client_env(settings, url),
           "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
           "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds), "PREFECT_LOGGING_LOG_PRINTS": "true"}
    prefect_cli = str(Path(venv_bin) / "prefect")
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [prefect_cli, "worker", "start", "--pool", platform.OPERATOR_POOL, "--type", "process",
             "--name", f"operator-{os.getpid()}"],
            cwd=deploy_dir, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_worker_online(settings, url, proc, log_path)
        yield proc
    finally:
        if proc.poll() is None:
            # Every run it took has ended by now. A worker that gets its stop while a
            # finished run's engine is still exiting (flushing logs, stopping heartbeats)
            # waited for it, once for 15 s in a cold start's smoke and in the benchmark:
            # give it a short grace, then kill what is left of it.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=OPERATOR_WORKER_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                get_logger().info("the operator's worker did not stop within %d s: killed (its log: %s)",
                                  OPERATOR_WORKER_STOP_GRACE_SECONDS, log_path)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def workers_online(settings: StackSettings, url: str, worker_hosts: list[str]) -> dict[str, bool]:
    """Whether each worker host's process and Docker workers (``<host>-<pool>``) are online."""
    pools = (platform.PROCESS_POOL, platform.DOCKER_POOL)
    async with platform.prefect_client(settings, url) as client:
        online = {w.name for pool in pools for w in await client.read_workers_for_work_pool(pool)
                  if w.status.value == "ONLINE"}
    return {f"{host}-{pool}": f"{host}-{pool}" in online for host in worker_hosts for pool in pools}


def _wait_worker_online(settings: StackSettings, url: str, proc: subprocess.Popen, log_path: Path) -> None:
    async def online() -> bool:
        async with platform.prefect_client(settings, url) as client:
            workers = await client.read_workers_for_work_pool(platform.OPERATOR_POOL)
            return any(w.name == f"operator-{os.getpid()}" and w.status.value == "ONLINE" for w in workers)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the operator's process worker exited; see {log_path}")
        if asyncio.run(online()):
            return
        time.sleep(0.5)
    raise StackError(f"the operator's process worker did not come online in 60 s; see {log_path}")
