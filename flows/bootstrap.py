"""The one command: every step, in order, as sub-flows of one parent flow, each handed
the typed outputs of the steps before it.

    python -m flows.bootstrap        # STACK_TARGET=local (default) or aws
"""

from __future__ import annotations

import argparse
import time

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.configure import ConfigureReport, configure
from flows.deploy import DeployReport, deploy
from flows.hosts import HostsReport, hosts
from flows.preflight import PreflightReport, preflight
from flows.provision import ProvisionOutputs, provision
from flows.register import RegisterReport, register
from flows.restore import RestoreReport, restore
from flows.smoke import SmokeReport, smoke_test
from stack import platform
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings


class BootstrapReport(BaseModel):
    preflight: PreflightReport
    provision: ProvisionOutputs
    hosts: HostsReport
    configure: ConfigureReport
    restore: RestoreReport
    registration: RegisterReport
    deployments: DeployReport
    smoke: SmokeReport
    platform_api_url: str
    seconds: dict[str, float]


@flow(name="bootstrap")
@exclusive
def bootstrap(settings: StackSettings | None = None) -> BootstrapReport:
    """Stand up the whole platform (its data comes back from the data volume or a backup)."""
    settings = settings or load_settings()
    log = get_run_logger()
    seconds: dict[str, float] = {}

    def timed(name, step, *args, **kwargs):
        started = time.monotonic()
        result = step(settings, *args, **kwargs)
        seconds[name] = round(time.monotonic() - started, 2)
        return result

    # settings -> cloud resources -> hosts -> configured platform -> its data -> runs
    checked = timed("preflight", preflight)
    provisioned = timed("provision", provision)
    booted = timed("hosts", hosts, provisioned)
    configured = timed("configure", configure, provisioned, booted)
    # A new or lost data volume leaves an empty database: the latest backup fills it.
    restored = timed("restore", restore, only_if_empty=True)
    registered = timed("register", register)
    deployed = timed("deploy", deploy)
    smoked = timed("smoke", smoke_test)
    report = BootstrapReport(
        preflight=checked, provision=provisioned, hosts=booted, configure=configured, restore=restored,
        registration=registered, deployments=deployed, smoke=smoked,
        platform_api_url=configured.platform_api_url, seconds=seconds,
    )
    log.info("bootstrap done: %s", ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    log.info("platform API %s (auth string in %s)", report.platform_api_url, platform.auth_file(settings))
    return report


if __name__ == "__main__":
    from stack.cli import main

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main(lambda s: bootstrap(s))
