"""Restore: the latest backup of the platform database (or one named) into the server.
Bootstrap calls it with ``only_if_empty`` after configure, so a lost or new data volume
comes back from the latest backup by itself.

    python -m flows.restore                     # the latest backup
    python -m flows.restore --backup NAME       # one of python -m flows.restore --list

A rollback after an upgrade is a restore of the backup the upgrade took, on the version
it was taken on: ``STACK_PREFECT_VERSION=<old> python -m flows.restore --backup
<...-pre-upgrade-<old>-to-<new>.dump>``. The database goes back with the server stopped,
then the platform is brought up on the old Prefect (bootstrap from configure on).
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger
from pydantic import BaseModel

from packaging.version import Version

from stack import aws, backups, platform, statebackend, upgrade
from stack.aws import SettingRefused
from stack.proc import StackError
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings


class RestoreReport(BaseModel):
    restored: bool
    backup: dict | None = None    # name, time, size, location
    reason: str = ""


@flow(name="restore")
@exclusive
def restore(settings: StackSettings | None = None, backup_name: str | None = None,
            only_if_empty: bool = False) -> RestoreReport:
    """Restore a backup into the platform database (only into an empty one with ``only_if_empty``)."""
    settings = settings or load_settings()
    log = get_run_logger()
    server = platform.server_host(settings)
    if only_if_empty and not backups.database_is_empty(settings, server):
        return RestoreReport(restored=False, reason="the platform database holds data")
    found = backups.available(settings, statebackend.code_bucket_name(settings))
    if backup_name:
        chosen = next((b for b in found if b.name == backup_name), None)
        if chosen is None:
            raise StackError(f"no backup named {backup_name!r}; python -m flows.restore --list shows them")
    elif found:
        chosen = found[-1]
    elif only_if_empty:
        log.info("the platform database is empty and there is no backup: a new platform")
        return RestoreReport(restored=False, reason="no backup")
    else:
        raise StackError(f"no backup in s3://{statebackend.code_bucket_name(settings)}/{backups.BACKUP_PREFIX} "
                         f"or {backups.local_dir(settings)}; python -m flows.backup takes one")
    if only_if_empty:
        log.warning("the platform database is empty (a new or lost data volume) and a backup exists: "
                    "restoring %s from %s", chosen.name, chosen.created_at.isoformat())
    rollback = None if only_if_empty else _rollback_to(settings, chosen)
    workers = [i["name"] for i in aws.running_hosts(settings, "worker")]
    backups.restore(settings, server, chosen, worker_hosts=workers, start_server=rollback is None,
                    api_hosts=[i["name"] for i in aws.running_hosts(settings, "api")])
    if rollback:
        # The server stays stopped on the older database: configure installs the older
        # Prefect and starts it; register, deploy and the smoke follow.
        from flows.bootstrap import bootstrap

        upgrade.record_version(settings)
        upgrade.mark_pools_paused(settings)  # the backup holds them paused: configure resumes them
        log.info("restored %s; bringing the platform up on Prefect %s", chosen.name, rollback)
        bootstrap(settings, from_step="configure")
    platform.wait_ready(settings, platform.operator_api_url(settings))
    log.info("restored %s into the platform database", chosen.name)
    reason = f"rollback to Prefect {rollback}" if rollback else "requested" if not only_if_empty else "empty database"
    return RestoreReport(restored=True, backup=chosen.as_dict(), reason=reason)


def _rollback_to(settings: StackSettings, chosen: backups.Backup) -> str | None:
    """The older Prefect this restore rolls the platform back to, or None for a restore on
    the running version. Onto an older version only a backup taken before the upgrade
    from it goes (its database is of that version); anything else is refused first."""
    running = upgrade.running_version(settings)
    wanted = settings.prefect_version
    if running is None or Version(wanted) >= Version(running):
        return None
    taken_on = backups.upgrade_versions(chosen.name)
    if taken_on is None or taken_on[0] != wanted:
        raise SettingRefused(
            f"prefect_version: {wanted} is older than the platform's {running}; a rollback restores a backup "
            f"taken before the upgrade from {wanted} (named ...-pre-upgrade-{wanted}-to-...), not {chosen.name}. "
            f"Set STACK_PREFECT_VERSION={running} to restore it on the running version")
    return wanted


if __name__ == "__main__":
    from stack.cli import main, step_parser

    parser = step_parser("flows.restore", __doc__)
    parser.add_argument("--backup", metavar="NAME", help="restore this backup instead of the latest")
    parser.add_argument("--list", action="store_true", help="list the backups and exit")
    args = parser.parse_args()
    if args.list:
        # The local copies are listed even when the cloud does not answer.
        listing = main(lambda s: [b.as_dict() for b in backups.available(s, statebackend.code_bucket_name_or_none(s))],
                       control_plane=False)
        print(json.dumps(listing, indent=2))
    else:
        main(lambda s: restore(s, backup_name=args.backup))
