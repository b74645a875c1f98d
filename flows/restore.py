"""Restore: the latest backup of the platform database (or one named) into the server.
Bootstrap calls it with ``only_if_empty`` after configure, so a lost or new data volume
comes back from the latest backup by itself.

    python -m flows.restore                     # the latest backup
    python -m flows.restore --backup NAME       # one of python -m flows.restore --list
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger
from pydantic import BaseModel

from stack import aws, backups, platform
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
    found = backups.available(settings, settings.effective_bucket_name)
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
        raise StackError(f"no backup in s3://{settings.effective_bucket_name}/{backups.BACKUP_PREFIX} "
                         f"or {backups.local_dir(settings)}; python -m flows.backup takes one")
    if only_if_empty:
        log.warning("the platform database is empty (a new or lost data volume) and a backup exists: "
                    "restoring %s from %s", chosen.name, chosen.created_at.isoformat())
    workers = [i["name"] for i in aws.running_hosts(settings, "worker")]
    backups.restore(settings, server, chosen, worker_hosts=workers)
    platform.wait_ready(settings, platform.operator_api_url(settings))
    log.info("restored %s into the platform database", chosen.name)
    return RestoreReport(restored=True, backup=chosen.as_dict(), reason="requested" if not only_if_empty else "empty database")


if __name__ == "__main__":
    from stack.cli import main, step_parser

    parser = step_parser("flows.restore", __doc__)
    parser.add_argument("--backup", metavar="NAME", help="restore this backup instead of the latest")
    parser.add_argument("--list", action="store_true", help="list the backups and exit")
    args = parser.parse_args()
    if args.list:
        listing = main(lambda s: [b.as_dict() for b in backups.available(s, s.effective_bucket_name)],
                       control_plane=False)
        print(json.dumps(listing, indent=2))
    else:
        main(lambda s: restore(s, backup_name=args.backup))
