"""Scaling the worker hosts out and back in on the shared stack: the scale-out configures
only the new host (the others keep their configuration); with two worker hosts,
four workers are online and the runs of one deployment spread over both hosts (the host
that ran each run is on the run, as its ``prefect.worker.name`` label); going back to
one removes that host, its workers show offline, and a run that was in flight there ends
Crashed instead of staying Running for ever.

It changes the shared stack, so it runs after the others, first of those that do
(tests/conftest.py says why), and leaves the stack at
one worker host, bootstrapped.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from stack import aws, capacity, platform, smoke
from tests.conftest import TEST_STACK_ENV, clean_env, result_json, run_step

pytestmark = [pytest.mark.e2e, pytest.mark.teardown_last]
# The workers' concurrency stays the default (4 runs per worker), so the scale-out
# changes only the number of hosts: configure runs on the new host alone. A burst of
# three times one worker's slots cannot all go to the first poller.
SCALED = {"STACK_WORKER_COUNT": "2"}
BURST = 12


def worker_hosts(settings) -> list[str]:
    return sorted(i["name"] for i in aws.running_hosts(settings, "worker"))


async def submit(settings, url, deployment: str, n: int) -> list:
    return [await smoke.run_deployment_once(settings, url, deployment) for _ in range(n)]


async def read_runs(settings, url, ids) -> list:
    async with platform.prefect_client(settings, url) as client:
        return [await client.read_flow_run(i) for i in ids]


async def pools_and_workers(settings, url) -> tuple[dict, dict]:
    async with platform.prefect_client(settings, url) as client:
        limits = {p: (await client.read_work_pool(p)).concurrency_limit
                  for p in (platform.PROCESS_POOL, platform.DOCKER_POOL)}
        workers = {w.name: w.status.value for p in limits for w in await client.read_workers_for_work_pool(p)}
    return limits, workers


def ran_on(run) -> str:
    return (run.labels or {})["prefect.worker.name"].rsplit("-", 1)[0]


def test_two_worker_hosts_share_the_runs_and_scaling_back_crashes_what_was_in_flight(stack):
    s = stack["settings"]
    url = platform.api_url(s)

    first = worker_hosts(s)
    default = capacity.worker_concurrency(s)  # what a t3.small's memory holds: 4
    assert default == 4
    scaled = result_json(run_step("flows.bootstrap", env=clean_env(**TEST_STACK_ENV, **SCALED)))
    assert scaled["smoke"]["ok"] and not scaled["smoke"]["health_only"]
    two = worker_hosts(s)
    assert len(two) == 2
    assert sorted(scaled["configure"]["recap"]) == sorted(set(two) - set(first)), scaled["configure"]["recap"]
    online = asyncio.run(smoke.workers_online(s, url, two))
    assert len(online) == 4 and all(online.values()), online
    limits, _ = asyncio.run(pools_and_workers(s, url))
    assert limits == {platform.PROCESS_POOL: 2 * default, platform.DOCKER_POOL: 2 * default}  # per worker x 2 hosts

    ids = asyncio.run(submit(s, url, smoke.CASE_DEPLOYMENTS["case3-s3-process"], BURST))
    for i in ids:
        asyncio.run(smoke.wait_final(s, url, i))
    runs = asyncio.run(read_runs(s, url, ids))
    assert [r.state.type.value for r in runs] == ["COMPLETED"] * BURST
    assert {ran_on(r) for r in runs} == set(two), "the burst did not spread over both worker hosts"

    # A run caught in flight on the host that goes away: freeze that host mid-run. As many
    # runs as the burst, so that the first host's workers cannot take them all (with 4,
    # one host's slots held every one of them, and no run ever went to the other).
    leaving = two[-1]
    ids = asyncio.run(submit(s, url, smoke.CASE_DEPLOYMENTS["case3-s3-process"], BURST))
    in_flight = None
    deadline = time.monotonic() + 120
    while in_flight is None and time.monotonic() < deadline:
        for r in asyncio.run(read_runs(s, url, ids)):
            if r.state.type.value == "RUNNING" and (r.labels or {}).get("prefect.worker.name", "").startswith(leaving):
                in_flight = r
        time.sleep(0.2)
    assert in_flight is not None, f"no run went to {leaving} within 120 s"
    freeze(leaving)

    back = result_json(run_step("flows.bootstrap", env=clean_env(**TEST_STACK_ENV)))
    assert back["smoke"]["ok"]
    assert worker_hosts(s) == two[:1]
    assert run_quiet("docker", "inspect", leaving) != 0, f"host container {leaving} was not removed"
    [after] = asyncio.run(read_runs(s, url, [in_flight.id]))
    assert after.state.type.value == "CRASHED" and leaving in after.state.message
    for i in ids:
        asyncio.run(smoke.wait_final(s, url, i))  # nothing of the burst is left Running

    limits, workers = asyncio.run(pools_and_workers(s, url))
    assert limits == {platform.PROCESS_POOL: default, platform.DOCKER_POOL: default}  # the default, one host
    # The server marks a worker offline after three missed heartbeats (10 s each here).
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        _, workers = asyncio.run(pools_and_workers(s, url))
        if all(workers[f"{leaving}-{p}"] == "OFFLINE" for p in (platform.PROCESS_POOL, platform.DOCKER_POOL)):
            break
        time.sleep(5)
    assert workers[f"{leaving}-process"] == "OFFLINE" and workers[f"{leaving}-docker"] == "OFFLINE", workers
    assert workers[f"{two[0]}-process"] == "ONLINE" and workers[f"{two[0]}-docker"] == "ONLINE", workers


def freeze(host: str) -> None:
    """``docker pause`` the host. The cgroup freezer can fail to settle while the host
    forks its runs' processes (runc: "unable to freeze"); a few tries get it."""
    import subprocess

    for _ in range(10):
        done = subprocess.run(["docker", "pause", host], capture_output=True, text=True)
        if done.returncode == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"docker pause {host} failed 10 times: {done.stderr.strip()}")


def run_quiet(*argv: str) -> int:
    import subprocess

    return subprocess.run(list(argv), capture_output=True).returncode
