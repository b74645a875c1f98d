"""The control plane's runner: every step as a deployment with a Run button in the
Prefect UI; teardown (compute only, data kept) on a nightly schedule
(STACK_NIGHTLY_TEARDOWN_CRON, in STACK_SCHEDULE_TIMEZONE). The nightly backup is
not here: a systemd timer on the server host runs it (STACK_BACKUP_CRON).

Started in the background by the entry points (``stack/controlplane.py``); run it in the
foreground with ``python -m flows.serve``.
"""

from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron

from flows.backup import backup
from flows.bake import bake
from flows.bootstrap import bootstrap
from flows.configure import configure
from flows.deploy import deploy
from flows.hosts import hosts
from flows.preflight import preflight
from flows.provision import provision
from flows.register import register
from flows.restore import restore
from flows.smoke import smoke_test
from flows.teardown import teardown
from stack.settings import load_settings


def deployments(settings):
    tag = settings.name_prefix
    tz = settings.schedule_timezone

    def scheduled(cron: str) -> list:
        return [Cron(cron, timezone=tz)] if cron else []

    steps = [bootstrap, preflight, bake, provision, hosts, configure, restore, register, deploy, smoke_test]
    out = [f.to_deployment(name=f"{tag}-{f.name}", tags=[tag]) for f in steps]
    out.append(teardown.to_deployment(
        name=f"{tag}-nightly-teardown", tags=[tag], schedules=scheduled(settings.nightly_teardown_cron),
        description="Destroys the stack's compute and keeps its data (a backup is taken first); "
                    "a run that starts overdue is skipped.",
    ))
    out.append(backup.to_deployment(
        name=f"{tag}-backup", tags=[tag],
        description="Runs the server host's backup now (pg_dump to the code bucket, backups/) and keeps a copy in "
                    "the state directory. The nightly one needs no Run: a timer on the server host runs it "
                    "(STACK_BACKUP_CRON).",
    ))
    return out


if __name__ == "__main__":
    from stack.cli import parse_step_args

    parse_step_args("flows.serve", __doc__)
    serve(*deployments(load_settings()))
