"""The one command: every step, in order, as sub-flows of one parent flow.

    python -m flows.bootstrap        # STACK_TARGET=local (default) or aws
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.configure import ConfigureReport, configure
from flows.deploy import DeployReport, deploy
from flows.hosts import HostsReport, hosts
from flows.preflight import PreflightReport, preflight
from flows.provision import ProvisionOutputs, provision
from flows.register import RegisterReport, register
from flows.smoke import SmokeReport, smoke_test
from stack import platform
from stack.settings import StackSettings, load_settings


class BootstrapReport(BaseModel):
    preflight: PreflightReport
    provision: ProvisionOutputs
    hosts: HostsReport
    configure: ConfigureReport
    registration: RegisterReport
    deployments: DeployReport
    smoke: SmokeReport
    platform_api_url: str
    seconds: dict[str, float]


@flow(name="bootstrap")
def bootstrap(settings: StackSettings | None = None) -> BootstrapReport:
    """Stand up the whole platform."""
    settings = settings or load_settings()
    log = get_run_logger()
    seconds: dict[str, float] = {}

    def timed(name, step):
        started = time.monotonic()
        result = step(settings)
        seconds[name] = round(time.monotonic() - started, 2)
        return result

    report = BootstrapReport(
        preflight=timed("preflight", preflight),
        provision=timed("provision", provision),
        hosts=timed("hosts", hosts),
        configure=timed("configure", configure),
        registration=timed("register", register),
        deployments=timed("deploy", deploy),
        smoke=timed("smoke", smoke_test),
        platform_api_url=platform.operator_api_url(settings),
        seconds=seconds,
    )
    log.info("bootstrap done: %s", ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    log.info("platform API %s (auth string in %s)", report.platform_api_url, platform.auth_file(settings))
    return report


if __name__ == "__main__":
    from stack.cli import main

    main(lambda s: bootstrap(s))
