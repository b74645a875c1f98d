"""Backup: runs the server host's own backup (``pg_dump`` streamed to the code bucket
under ``backups/``, versioned, encrypted) and waits for it, then keeps a copy under the
state directory. Runs before every teardown; the nightly backup needs no operator
machine: a systemd timer on the server host runs the same service (STACK_BACKUP_CRON).

    python -m flows.backup
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from stack import aws, backups, platform, statebackend
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings


class BackupReport(BaseModel):
    name: str
    time: str
    size: int               # bytes
    location: str           # s3://bucket/backups/<name>
    local_copy: str


@flow(name="backup", retries=1, retry_delay_seconds=10)
@exclusive
def backup(settings: StackSettings | None = None) -> BackupReport:
    """Back up the platform database to the code bucket and the state directory."""
    settings = settings or load_settings()
    log = get_run_logger()
    aws.check_credentials(settings, "the backup did not start")
    server = platform.server_host(settings)
    taken = backups.take(settings, server, statebackend.code_bucket_name(settings))
    report = BackupReport(**taken.as_dict(), local_copy=str(backups.local_dir(settings) / taken.name))
    create_markdown_artifact(
        key=f"{settings.name_prefix}-backup",
        markdown=f"**Backup** `{report.name}`: {report.size} bytes at `{report.location}`, copy at `{report.local_copy}`",
        description="The latest backup of the platform database",
    )
    log.info("backed up the platform database: %s (%d bytes)", report.location, report.size)
    return report


if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.backup", __doc__)
    main(lambda s: backup(s))
