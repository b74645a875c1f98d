"""Backups of the platform database: ``pg_dump`` (custom format) on the server host,
streamed to the code bucket under ``backups/`` (versioned, encrypted, expiring after
STACK_BACKUP_RETENTION_DAYS) by the host's own backup service, which its systemd timer
starts every night with no operator machine involved; the operator's backup (before a
teardown) starts the same service, waits for it, and keeps a copy under the state
directory. Restore streams one back into ``pg_restore`` on the server host.

One code path for both targets: commands reach the server over SSH, see stack/hostexec.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stack import aws
from stack.hostexec import open_on_host, run_on_host
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

BACKUP_PREFIX = "backups/"
DB_NAME = "prefect"          # the prefect_server role's database and its owner
DB_OWNER = "prefect"
SERVER_SERVICE = "prefect-server"
# Multi-server mode's background services (on the server host), which hold database
# connections of their own, like the API hosts' servers.
SERVICES_SERVICE = "prefect-services"
# The prefect_worker role's services (prefect_worker_pools): stopped for a restore, so
# that no worker keeps a work pool it read from the database being replaced.
WORKER_SERVICES = ("prefect-worker-process", "prefect-worker-docker")
LOCAL_COPIES_KEPT = 10
_STAMP = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class Backup:
    name: str                 # <prefix>-platform-<UTC stamp>[-<label>].dump (files/prefect-backup.py names it)
    created_at: dt.datetime
    size: int                 # bytes
    location: str             # s3://bucket/backups/... or a local path

    def as_dict(self) -> dict:
        return {"name": self.name, "time": self.created_at.isoformat(), "size": self.size, "location": self.location}


def local_dir(settings: StackSettings) -> Path:
    return settings.state_path / "backups"


def _time_of(name: str) -> dt.datetime | None:
    m = re.search(r"-platform-(\d{8}T\d{6}Z)(?:-[A-Za-z0-9.-]+)?\.dump$", name)
    return dt.datetime.strptime(m.group(1), _STAMP).replace(tzinfo=dt.UTC) if m else None


def upgrade_versions(name: str) -> tuple[str, str] | None:
    """(old, new) of a backup taken before an upgrade (``...-pre-upgrade-<old>-to-<new>.dump``)."""
    m = re.search(r"-pre-upgrade-(\d+\.\d+\.\d+)-to-(\d+\.\d+\.\d+)\.dump$", name)
    return (m.group(1), m.group(2)) if m else None


BACKUP_SERVICE = "prefect-backup.service"    # the prefect_server role's backup (tasks/backup.yml)
SAFETY_STOP_LABEL = "safety-stop"            # the final backup of the hosts' own stop (its unit sets it)
LAST_BACKUP_FILE = "/var/lib/prefect-backup/last.json"


def taken_by_safety_stop(name: str) -> bool:
    return name.endswith(f"-{SAFETY_STOP_LABEL}.dump")


def take(settings: StackSettings, server: str, bucket: str, label: str | None = None) -> Backup:
    """Run the server host's own backup (the unit its nightly timer starts) and wait for
    it: pg_dump streamed into the bucket with the host's credentials. Then a copy of the
    dump under the state directory (0600: it holds the platform's blocks). ``label``
    (e.g. ``pre-upgrade-3.8.8-to-3.9.1``) goes into the backup's name, after its time."""
    try:
        run_on_host(settings, server, ["systemctl", "start", BACKUP_SERVICE], timeout=3600)
    except StackError as exc:
        journal = run_on_host(settings, server, ["journalctl", "-u", BACKUP_SERVICE, "-n", "5", "--no-pager",
                                                 "-o", "cat"]).strip().splitlines()
        if "not found" in str(exc):
            raise StackError(f"the server host {server} has no backup service yet (configured by an older "
                             "version of the stack); run python -m flows.bootstrap --from configure") from None
        raise StackError(f"the backup on {server} failed: {journal[-1] if journal else exc}") from None
    last = json.loads(run_on_host(settings, server, ["cat", LAST_BACKUP_FILE]))
    if last.get("location") != f"s3://{bucket}/{BACKUP_PREFIX}{last.get('name')}":
        raise StackError(f"the backup on {server} wrote {last.get('location')}, not into bucket {bucket}; "
                         "run python -m flows.bootstrap --from configure")
    name = last["name"]
    s3 = aws.client(settings, "s3")
    if label:
        labelled = labelled_copy(settings, Backup(name, _time_of(name), last["size"], last["location"]), label)
        s3.delete_object(Bucket=bucket, Key=BACKUP_PREFIX + name)
        name, last["location"] = labelled.name, labelled.location
    local = local_dir(settings) / name
    local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = local.with_suffix(".partial")
    try:
        with open(partial, "wb") as copy:
            partial.chmod(0o600)
            s3.download_fileobj(bucket, BACKUP_PREFIX + name, copy)
        partial.rename(local)
    finally:
        partial.unlink(missing_ok=True)
    for old in sorted(local.parent.glob("*.dump"))[:-LOCAL_COPIES_KEPT]:
        old.unlink()
    get_logger().info("backup %s: %d bytes to %s (by %s on %s) and %s", name, last["size"], last["location"],
                      BACKUP_SERVICE, server, local)
    return Backup(name, _time_of(name), last["size"], last["location"])


def labelled_copy(settings: StackSettings, backup: Backup, label: str) -> Backup:
    """A copy of ``backup`` named with ``label`` after its time (its bucket's, or its local
    file's), e.g. the backup an upgrade returns to: ``...-pre-upgrade-3.8.8-to-3.9.1.dump``."""
    name = backup.name.removesuffix(".dump") + f"-{label}.dump"
    if backup.location.startswith("s3://"):
        bucket, _, key = backup.location.removeprefix("s3://").partition("/")
        # The managed copy: CopyObject alone stops at 5 GB.
        aws.client(settings, "s3").copy({"Bucket": bucket, "Key": key}, bucket, BACKUP_PREFIX + name)
        return Backup(name, backup.created_at, backup.size, f"s3://{bucket}/{BACKUP_PREFIX}{name}")
    local = Path(backup.location).with_name(name)
    local.write_bytes(Path(backup.location).read_bytes())
    local.chmod(0o600)
    return Backup(name, backup.created_at, backup.size, str(local))


def available(settings: StackSettings, bucket: str | None) -> list[Backup]:
    """Every backup in the bucket (unless None) and under the state directory, oldest
    first (the bucket's copy wins when both have it)."""
    found: dict[str, Backup] = {}
    for path in sorted(local_dir(settings).glob("*.dump")):
        if (when := _time_of(path.name)) is not None:
            found[path.name] = Backup(path.name, when, path.stat().st_size, str(path))
    if bucket is None:
        return sorted(found.values(), key=lambda b: b.created_at)
    try:
        pages = aws.client(settings, "s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=BACKUP_PREFIX)
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"].removeprefix(BACKUP_PREFIX)
                if (when := _time_of(name)) is not None:
                    found[name] = Backup(name, when, obj["Size"], f"s3://{bucket}/{obj['Key']}")
    except Exception as exc:  # no bucket (yet, or any more): the local copies still count
        get_logger().info("no backups listed from bucket %s (%s)", bucket, type(exc).__name__)
    return sorted(found.values(), key=lambda b: b.created_at)


def database_is_empty(settings: StackSettings, server: str) -> bool:
    """True when the platform database holds nothing a user made: no deployment, flow
    run or named block (what a new or lost data volume looks like). Work pools do not
    count: a worker that starts before the restore creates its pool itself."""
    query = ("select (select count(*) from deployment) + (select count(*) from flow_run)"
             " + (select count(*) from block_document where not is_anonymous)")
    out = run_on_host(settings, server, ["sudo", "-u", DB_OWNER, "psql", "-d", DB_NAME, "-tAc", query])
    return int(out.strip() or 0) == 0


def restore(settings: StackSettings, server: str, backup: Backup, worker_hosts: Sequence[str] = (),
            start_server: bool = True, api_hosts: Sequence[str] = ()) -> None:
    """Replace the platform database on ``server`` with ``backup``. The Prefect server and
    the workers on ``worker_hosts`` (names) are stopped meanwhile and started again
    afterwards; with ``start_server`` false (a rollback, whose older Prefect configure
    installs next) the server stays stopped unless the restore failed. In multi-server
    mode the background services and the servers of ``api_hosts`` are stopped and
    started with it: each holds connections to the database, and dropdb refuses a
    database in use (one that reconnected would read a half-restored one).

    Why the workers too: a worker keeps the work pool (its job template) it last read.
    One that started on an empty database created its pool with Prefect's default
    template and, after the restore, ran the next Docker flow run with it (no host
    network, no CA: the container could not reach the server and exited 1). Restarted,
    it reads the restored pool. A run in flight on those hosts is stopped with them; it
    belonged to the database being replaced."""
    log = get_logger()
    if backup.location.startswith("s3://"):
        bucket, _, key = backup.location.removeprefix("s3://").partition("/")
        body = aws.client(settings, "s3").get_object(Bucket=bucket, Key=key)["Body"]
    else:
        body = open(backup.location, "rb")  # noqa: SIM115 - closed below
    log.info("restoring %s (%d bytes) into the platform database on %s", backup.name, backup.size, server)
    restored = False
    try:
        for host in worker_hosts:
            run_on_host(settings, host, ["systemctl", "stop", *WORKER_SERVICES])
        for host in api_hosts:
            run_on_host(settings, host, ["systemctl", "stop", SERVER_SERVICE])
        run_on_host(settings, server, ["systemctl", "stop", *server_services(settings)])
        run_on_host(settings, server, ["sudo", "-u", "postgres", "dropdb", "--if-exists", DB_NAME])
        run_on_host(settings, server, ["sudo", "-u", "postgres", "createdb", "-O", DB_OWNER, DB_NAME])
        proc = open_on_host(settings, server, ["sudo", "-u", DB_OWNER, "pg_restore", "--no-owner", "--no-privileges",
                                               "--no-comments", "--exit-on-error", "-d", DB_NAME], write=True)
        assert proc.stdin
        try:
            while chunk := body.read(1 << 20):
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        assert proc.stderr
        err = proc.stderr.read()
        if proc.wait() != 0:
            raise StackError(f"pg_restore of {backup.name} on {server} failed (exit {proc.returncode}): "
                             f"{err.decode(errors='replace').strip()[-500:]}")
        restored = True
    finally:
        body.close()
        if start_server or not restored:
            run_on_host(settings, server, ["systemctl", "start", SERVER_SERVICE])
            beside = server_services(settings)[1:]
            if beside or api_hosts:
                # The server migrates a restored older database at its start; the services
                # and the API hosts (which do not migrate) start on the migrated one.
                run_on_host(settings, server, ["sh", "-c", WAIT_FOR_SERVER], timeout=SERVER_START_TIMEOUT + 30)
            if beside:
                run_on_host(settings, server, ["systemctl", "start", *beside])
            for host in api_hosts:
                run_on_host(settings, host, ["systemctl", "start", SERVER_SERVICE])
        # The workers wait for the server themselves (systemd restarts them until it answers).
        for host in worker_hosts:
            run_on_host(settings, host, ["systemctl", "start", *WORKER_SERVICES])


def server_services(settings: StackSettings) -> list[str]:
    """The server host's units that use the platform database: the server, and in
    multi-server mode the background services beside it."""
    return [SERVER_SERVICE, SERVICES_SERVICE] if settings.multi_server else [SERVER_SERVICE]


# The server's loopback port (the prefect_server role's prefect_server_internal_port);
# /api/health answers once its start (a migration included) is done.
SERVER_START_TIMEOUT = 300
WAIT_FOR_SERVER = (f"for i in $(seq {SERVER_START_TIMEOUT}); do curl -sf -o /dev/null "
                   "http://127.0.0.1:4210/api/health && exit 0; sleep 1; done; "
                   "echo 'the Prefect server did not answer on 127.0.0.1:4210' >&2; exit 1")


def delete_all_local(settings: StackSettings) -> int:
    """Remove the local copies (teardown --all); returns how many."""
    copies = list(local_dir(settings).glob("*.dump"))
    for p in copies:
        p.unlink()
    return len(copies)
