"""Upgrades end to end, on a platform made for them, and the stock path on the way.

The teardown tests have destroyed the shared stack; a new one is bootstrapped from nothing
on the release pinned before (3.8.8, locks/prefect-3.8.8.txt) and on stock hosts
(STACK_HOST_IMAGE=stock: plain Debian, what a stock AMI is), so configure installs
everything over SSH (apt, the Docker engine, PostgreSQL, the Prefect virtualenv) and
every case passes on them.

Then an upgrade to the pinned Prefect is a bootstrap with the default
STACK_PREFECT_VERSION. A first attempt meets a database its first migration cannot apply
and goes back by itself. The real one: a backup named for the two versions comes first;
the hosts' virtualenvs get the new Prefect in place (the same instances), the server
restarts and migrates its database (Prefect's own migrations), the workers restart, a
new flow-runner image goes to the worker hosts and the Docker pool; every deployment,
block, pool and completed run is kept, the runs submitted as the upgrade starts all
complete, and every smoke case passes on the new version. While it runs, the API is
probed every half second: the longest time it did not answer is printed (a figure, not a
limit). A bootstrap on the older version afterwards is refused before anything changes,
naming the rollback; the rollback (the pre-upgrade backup restored on the older Prefect)
brings the platform back on it with every record.

It needs a stack of its own making, so it runs last, after the teardown tests; the
session's end tears it down.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import pytest

from stack import aws, pins, platform, smoke, statebackend
from stack.localcloud.images import docker_client, image_tag
from tests.conftest import TEST_STACK_ENV, clean_env, result_json, run_step
from tests.e2e.test_durability import assert_nothing_lost, platform_records

pytestmark = [pytest.mark.e2e, pytest.mark.teardown_last]
OLD = "3.8.8"                  # the release pinned before the current one (its lock is committed)
NEW = pins.pinned_prefect()
STOCK_OLD = {**TEST_STACK_ENV, "STACK_HOST_IMAGE": "stock", "STACK_PREFECT_VERSION": OLD}
STOCK_NEW = {**TEST_STACK_ENV, "STACK_HOST_IMAGE": "stock"}
SERVER, WORKER = "p2test-ec2-0", "p2test-ec2-1"


class ApiProbe(threading.Thread):
    """Asks the platform's /ready every half second; the longest time without an answer."""

    def __init__(self, settings, url: str):
        super().__init__(daemon=True)
        self.settings, self.url = settings, url
        self.longest_gap = 0.0
        self.answers = 0
        self._finished = threading.Event()

    def run(self) -> None:
        down_since = None
        while not self._finished.is_set():
            now = time.monotonic()
            if platform.ready(self.settings, self.url):
                self.answers += 1
                if down_since is not None:
                    self.longest_gap = max(self.longest_gap, now - down_since)
                down_since = None
            elif down_since is None:
                down_since = now
            self._finished.wait(0.5)
        if down_since is not None:
            self.longest_gap = max(self.longest_gap, time.monotonic() - down_since)

    def stop(self) -> float:
        self._finished.set()
        self.join(timeout=30)
        return self.longest_gap


async def submit(settings, url: str, per_case: int) -> list:
    return [await smoke.run_deployment_once(settings, url, smoke.CASE_DEPLOYMENTS[case])
            for case in ("case3-s3-process", "case4-s3-docker") for _ in range(per_case)]


async def final_states(settings, url: str, ids) -> dict[str, str]:
    for i in ids:
        await smoke.wait_final(settings, url, i, timeout=600)
    async with platform.prefect_client(settings, url) as client:
        return {str(i): (await client.read_flow_run(i)).state.type.value for i in ids}


async def docker_pool_image(settings, url: str) -> str:
    async with platform.prefect_client(settings, url) as client:
        pool = await client.read_work_pool(platform.DOCKER_POOL)
    return pool.base_job_template["variables"]["properties"]["image"]["default"]


async def pools_paused(settings, url: str) -> dict[str, bool]:
    async with platform.prefect_client(settings, url) as client:
        return {p: (await client.read_work_pool(p)).is_paused for p in (platform.PROCESS_POOL, platform.DOCKER_POOL)}


MIGRATION_BLOCKER = "automation_held_event"


def psql_on_server(sql: str) -> None:
    """As the database's owner (the platform's role): what it makes, its backup can dump."""
    from stack.backups import DB_NAME, DB_OWNER

    done = subprocess.run(["docker", "exec", SERVER, "sudo", "-u", DB_OWNER, "psql", "-v", "ON_ERROR_STOP=1",
                           "-d", DB_NAME, "-c", sql], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def versions(env) -> dict:
    return result_json(run_step("flows.status", "--json", env=env))["versions"]


def test_stock_hosts_on_the_older_prefect_get_everything_from_configure_over_ssh_and_every_case_passes(stack):
    s = stack["settings"]
    if aws.project_instances(s):  # run on its own, after the shared stack's bootstrap
        run_step("flows.teardown", "--all", "--yes")
    boot = result_json(run_step("flows.bootstrap", env=clean_env(**STOCK_OLD), timeout=2400))
    forget_secrets_read_before()
    assert sorted(boot["hosts"]["created"]) == [SERVER, WORKER]
    stock = image_tag("host")
    for name in (SERVER, WORKER):
        assert docker_client().containers.get(name).image.tags[0] == stock
    # Configure installed what the bake would have: every host's Prefect virtualenv (the
    # older release), the worker host's Docker engine, the server host's PostgreSQL.
    assert subprocess.run(["docker", "run", "--rm", stock, "test", "-e", "/opt/prefect/venv"]).returncode == 1
    assert versions(clean_env(**STOCK_OLD)) == {"server": OLD, "hosts": {SERVER: OLD, WORKER: OLD}, "unanswered": {}}
    assert in_host(WORKER, "systemctl", "is-active", "docker") == "active"
    assert in_host(SERVER, "systemctl", "is-active", "postgresql") == "active"
    cases = {c["case"]: c for c in boot["smoke"]["cases"]}
    for name in ("case1-direct", "case2-local-storage", "case3-s3-process", "case4-s3-docker"):
        assert cases[name]["ok"] is True, cases[name]


def forget_secrets_read_before() -> None:
    """The stack was made anew by other processes (teardown --all, then bootstrap), with a
    new auth string and CA: what this process read of the old stack's secrets is stale."""
    from stack import accountsecrets

    accountsecrets._read.clear()


def in_host(name: str, *argv: str) -> str:
    return subprocess.run(["docker", "exec", name, *argv], capture_output=True, text=True).stdout.strip()


def test_a_bootstrap_with_a_newer_prefect_upgrades_in_place_and_an_older_one_is_refused(stack):
    s = stack["settings"]
    url = platform.api_url(s)
    old_env, new_env = clean_env(**STOCK_OLD), clean_env(**STOCK_NEW)
    forget_secrets_read_before()
    assert versions(old_env)["hosts"] == {SERVER: OLD, WORKER: OLD}
    before_ids = {i["name"]: i["id"] for i in aws.running_hosts(s)}
    before_image = asyncio.run(docker_pool_image(s, url))
    before = platform_records(s)

    # A failed migration goes back by itself. The new Prefect's first migration creates a
    # table (automation_held_event, new in 3.9): made here first, it makes that migration
    # fail, so the server cannot start on the new version.
    psql_on_server(f"CREATE TABLE {MIGRATION_BLOCKER} (x int)")
    attempt_started = time.monotonic()
    failed = run_step("flows.bootstrap", env=new_env, check=False, timeout=2400)
    print(f"failed upgrade and its rollback: {time.monotonic() - attempt_started:.0f} s")
    assert failed.returncode == 1, failed.stderr[-3000:]
    said = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert said and f"the upgrade from Prefect {OLD} to {NEW} failed" in said[-1], failed.stderr[-3000:]
    # The server's own wait saw it exit again and again, and said why (not a two-minute
    # timeout); the worker hosts' wait for it was stopped rather than run out.
    assert "keeps exiting while it starts" in said[-1] and MIGRATION_BLOCKER in said[-1], said[-1]
    assert "only wait on" in failed.stderr, failed.stderr[-3000:]
    assert f"rolled back: the platform runs Prefect {OLD} again on the backup" in said[-1], said[-1]
    assert f"pre-upgrade-{OLD}-to-{NEW}.dump" in said[-1], said[-1]
    assert versions(old_env) == {"server": OLD, "hosts": {SERVER: OLD, WORKER: OLD}, "unanswered": {}}
    assert asyncio.run(pools_paused(s, url)) == {platform.PROCESS_POOL: False, platform.DOCKER_POOL: False}
    assert_nothing_lost(before, s)
    psql_on_server(f"DROP TABLE {MIGRATION_BLOCKER}")

    in_flight = asyncio.run(submit(s, url, per_case=4))
    probe = ApiProbe(s, url)
    probe.start()
    started = time.monotonic()
    proc = run_step("flows.bootstrap", env=new_env, timeout=2400)
    wall = time.monotonic() - started
    gap = probe.stop()
    report = result_json(proc)
    print(f"\nupgrade {OLD} -> {NEW}: bootstrap {wall:.0f} s, longest time the API did not answer {gap:.1f} s "
          f"({probe.answers} answers); steps {report['seconds']}")

    # The pools were drained, then the backup taken, named for both versions, in the bucket.
    upgraded = report["configure"]["upgrade"]
    print(f"drained {upgraded['drained_runs']} runs in {upgraded['drain_seconds']} s")
    assert (upgraded["from"], upgraded["to"]) == (OLD, NEW)
    prefix = f"s3://{statebackend.code_bucket_name(s)}/"
    assert upgraded["backup"].startswith(prefix + "backups/")
    assert upgraded["backup"].endswith(f"-pre-upgrade-{OLD}-to-{NEW}.dump")
    key = upgraded["backup"].removeprefix(prefix)
    assert aws.client(s, "s3").head_object(Bucket=statebackend.code_bucket_name(s), Key=key)["ContentLength"] > 0
    assert "draining the worker hosts' pools, then backing up the platform first" in proc.stderr
    assert asyncio.run(pools_paused(s, url)) == {platform.PROCESS_POOL: False, platform.DOCKER_POOL: False}
    # In place: the same instances, now on the new Prefect (the server's own answer and
    # each host's virtualenv), with the Docker pool on a new flow-runner image.
    assert {i["name"]: i["id"] for i in aws.running_hosts(s)} == before_ids
    assert versions(new_env) == {"server": NEW, "hosts": {SERVER: NEW, WORKER: NEW}, "unanswered": {}}
    after_image = asyncio.run(docker_pool_image(s, url))
    assert after_image == report["configure"]["flow_runner_image"] != before_image
    # Nothing lost; what was submitted as the upgrade started completed; every case passes.
    assert_nothing_lost(before, s)
    states = asyncio.run(final_states(s, url, in_flight))
    assert set(states.values()) == {"COMPLETED"}, states
    cases = {c["case"]: c for c in report["smoke"]["cases"]}
    for name in ("case1-direct", "case2-local-storage", "case3-s3-process", "case4-s3-docker"):
        assert cases[name]["ok"] is True, cases[name]
    assert gap < 300, "the API did not come back"

    # Back to the older version by bootstrap: refused in one line before anything
    # changes, naming the rollback.
    refused = run_step("flows.bootstrap", env=old_env, check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    last = [line for line in refused.stderr.splitlines() if line.strip()][-1]
    assert f"prefect_version: the platform runs Prefect {NEW}" in last, last
    pre_upgrade = key.removeprefix("backups/")
    assert f"STACK_PREFECT_VERSION={OLD} python -m flows.restore --backup {pre_upgrade}" in last, last
    assert versions(new_env)["hosts"] == {SERVER: NEW, WORKER: NEW}

    # The rollback it names: the pre-upgrade backup restored, the platform on the old Prefect.
    rolled = result_json(run_step("flows.restore", "--backup", pre_upgrade, env=old_env, timeout=2400))
    assert rolled["restored"] is True and rolled["reason"] == f"rollback to Prefect {OLD}"
    assert versions(old_env) == {"server": OLD, "hosts": {SERVER: OLD, WORKER: OLD}, "unanswered": {}}
    # A switch back to the old version's virtualenv, kept beside the new one: no install.
    for host in (SERVER, WORKER):
        assert in_host(host, "readlink", "/opt/prefect/venv") == f"/opt/prefect/venv-prefect-{OLD}"
        assert in_host(host, "ls", f"/opt/prefect/venv-prefect-{NEW}/stack-installed.txt") != ""
    assert_nothing_lost(before, s)
    # The backup holds the pools paused (they were, for the upgrade); the rollback resumed them.
    assert asyncio.run(pools_paused(s, url)) == {platform.PROCESS_POOL: False, platform.DOCKER_POOL: False}

    # The same version again changes nothing: configure is skipped, the smoke passes.
    again = result_json(run_step("flows.bootstrap", "--verify", env=old_env))
    assert {o["step"]: o["outcome"] for o in again["steps"]}["configure"] == "skipped"
    assert all(c["ok"] for c in again["smoke"]["cases"]), again["smoke"]["cases"]
