"""The platform's Prefect version across bootstraps: what it runs, and what a change of
STACK_PREFECT_VERSION means.

The version the platform's database was last migrated to is recorded in the code bucket
(``platform/prefect-version``; the bucket outlives the compute, like the database), and
the running server says its own (``/admin/version``). A higher setting is an upgrade:
configure takes a backup named for the two versions first, installs the new Prefect in
place, and the server migrates the database when it restarts (Prefect's own migrations).
A lower one is refused before anything changes: Prefect's migrations only go forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from packaging.version import Version

from stack import aws, platform, statebackend
from stack.aws import SettingRefused
from stack.proc import get_logger
from stack.settings import StackSettings

VERSION_KEY = "platform/prefect-version"


@dataclass(frozen=True)
class VersionChange:
    running: str | None     # what the platform runs (None: no platform yet)
    wanted: str             # STACK_PREFECT_VERSION

    @property
    def is_upgrade(self) -> bool:
        return self.running is not None and Version(self.wanted) > Version(self.running)

    @property
    def backup_label(self) -> str:
        return f"pre-upgrade-{self.running}-to-{self.wanted}"

    def describe(self) -> str:
        if self.running is None:
            return f"Prefect {self.wanted} (a new platform)"
        if self.is_upgrade:
            return f"Prefect {self.running} -> {self.wanted}: an upgrade (a backup first, then the new version in place)"
        return f"Prefect {self.wanted} (unchanged)"


def _absent(exc: Exception) -> bool:
    """S3 says the bucket or the object does not exist (anything else is a real error)."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
        "NoSuchKey", "NoSuchBucket", "404", "NotFound")


def _read(settings: StackSettings, key: str) -> bytes | None:
    """An object of the code bucket, or None when it (or the bucket) does not exist."""
    try:
        return aws.client(settings, "s3").get_object(Bucket=statebackend.code_bucket_name(settings), Key=key)["Body"].read()
    except Exception as exc:
        if _absent(exc):
            return None
        raise


def recorded_version(settings: StackSettings) -> str | None:
    """The version recorded by the last configure, or None (no bucket, or no record yet)."""
    body = _read(settings, VERSION_KEY)
    return (body.decode().strip() or None) if body else None


def record_version(settings: StackSettings) -> None:
    """Record the version the platform now runs (configure, once its playbook succeeded)."""
    aws.client(settings, "s3").put_object(Bucket=statebackend.code_bucket_name(settings), Key=VERSION_KEY,
                                          Body=settings.prefect_version.encode())


def running_version(settings: StackSettings) -> str | None:
    """What the platform runs: its server's answer when it is up, else the record (after
    the nightly teardown no server runs, but the database on the volume keeps its version)."""
    answered = None
    if any(i["role"] == "server" for i in aws.running_hosts(settings)) and platform.auth_file(settings).exists():
        try:
            answered = platform.server_version(settings, platform.operator_api_url(settings))
        except Exception:  # noqa: BLE001 - not answering: the record says it
            answered = None
    return answered or recorded_version(settings)


def check_version_change(settings: StackSettings) -> VersionChange:
    """The change STACK_PREFECT_VERSION asks for; a downgrade is refused (exit 2), naming
    the rollback when a backup taken before the upgrade exists."""
    change = VersionChange(running_version(settings), settings.prefect_version)
    if change.running is not None and Version(change.wanted) < Version(change.running):
        from stack import backups

        taken = [b.name for b in backups.available(settings, statebackend.code_bucket_name(settings))
                 if (backups.upgrade_versions(b.name) or ("",))[0] == change.wanted]
        back = (f"to go back, roll back to the backup taken before the upgrade: STACK_PREFECT_VERSION={change.wanted} "
                f"python -m flows.restore --backup {taken[-1]}" if taken
                else f"no backup taken before an upgrade from {change.wanted} exists to roll back to")
        raise SettingRefused(
            f"prefect_version: the platform runs Prefect {change.running} and its database is migrated to it; "
            f"{change.wanted} is older, and Prefect's migrations only go forward. Set STACK_PREFECT_VERSION="
            f"{change.running} (or newer); {back}"
        )
    return change


# --- draining the worker hosts' pools around an upgrade ----------------------------------
# A worker restarted on a new Prefect stops the process-pool runs it started (they are its
# children), so an upgrade first pauses the worker hosts' pools (a paused pool hands out
# no run; scheduled runs wait as Late and start after), and waits for the runs in flight
# to end. The pools are paused in the database, which the pre-upgrade backup then holds,
# so a marker in the code bucket says "paused by an upgrade": configure resumes the pools
# at its end while the marker exists, also after a failed upgrade or a rollback.
PAUSE_MARKER_KEY = "platform/pools-paused-by-upgrade"
HOST_POOLS = (platform.PROCESS_POOL, platform.DOCKER_POOL)
DRAIN_TIMEOUT_SECONDS = 600


def mark_pools_paused(settings: StackSettings, pools=HOST_POOLS) -> None:
    """Record which pools an upgrade paused (configure resumes those, and only those)."""
    aws.client(settings, "s3").put_object(Bucket=statebackend.code_bucket_name(settings), Key=PAUSE_MARKER_KEY,
                                          Body=json.dumps(sorted(pools)).encode())


def _pools_marked_paused(settings: StackSettings) -> list[str]:
    body = _read(settings, PAUSE_MARKER_KEY)
    return json.loads(body) if body else []


async def _set_paused(settings: StackSettings, url: str, paused: bool, pools=HOST_POOLS) -> list[str]:
    """Pause (or resume) those of ``pools`` that are not already so; the ones it changed."""
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    changed = []
    async with platform.prefect_client(settings, url) as client:
        for pool in pools:
            try:
                if (await client.read_work_pool(pool)).is_paused != paused:
                    await client.update_work_pool(pool, WorkPoolUpdate(is_paused=paused))
                    changed.append(pool)
            except ObjectNotFound:  # not registered yet: nothing to pause or resume
                pass
    return changed


async def _runs_in_flight(settings: StackSettings, url: str) -> int:
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                                WorkPoolFilter, WorkPoolFilterName)
    from prefect.client.schemas.objects import StateType

    in_flight = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
        any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING])))
    async with platform.prefect_client(settings, url) as client:
        return len(await client.read_flow_runs(flow_run_filter=in_flight, limit=200,
                                               work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=list(HOST_POOLS)))))


def drain_pools(settings: StackSettings, url: str, timeout: float = DRAIN_TIMEOUT_SECONDS) -> tuple[int, float]:
    """Pause the worker hosts' pools and wait for their runs in flight to end: (how many
    were in flight, seconds waited). After ``timeout`` the upgrade goes on (a run still in
    flight then stops with its worker, and says so in its state)."""
    import asyncio
    import time

    # A pool the operator had paused stays paused after the upgrade: the marker lists
    # only the pools paused here (written first, so a failure right after still resumes them).
    running = [p for p in HOST_POOLS if p not in asyncio.run(_paused_now(settings, url))]
    mark_pools_paused(settings, running)
    asyncio.run(_set_paused(settings, url, True, running))
    started = time.monotonic()
    first = left = asyncio.run(_runs_in_flight(settings, url))
    while left and time.monotonic() - started < timeout:
        time.sleep(1)
        left = asyncio.run(_runs_in_flight(settings, url))
    if left:
        get_logger().warning("%d runs still in flight after %.0f s; upgrading anyway (they stop with their worker)",
                             left, timeout)
    return first, time.monotonic() - started


def resume_pools_paused_by_upgrade(settings: StackSettings, url: str) -> bool:
    """Resume the worker hosts' pools if an upgrade paused them; whether it did."""
    import asyncio

    pools = _pools_marked_paused(settings)
    if not pools:
        return False
    asyncio.run(_set_paused(settings, url, False, pools))
    aws.client(settings, "s3").delete_object(Bucket=statebackend.code_bucket_name(settings), Key=PAUSE_MARKER_KEY)
    return True


async def _paused_now(settings: StackSettings, url: str) -> list[str]:
    from prefect.exceptions import ObjectNotFound

    paused = []
    async with platform.prefect_client(settings, url) as client:
        for pool in HOST_POOLS:
            try:
                if (await client.read_work_pool(pool)).is_paused:
                    paused.append(pool)
            except ObjectNotFound:
                pass
    return paused
