"""The preflight step: settings valid, tools present, the cloud answers (emulated on local)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from stack import aws, capacity, upgrade
from stack.localcloud import emulator
from stack.localcloud.bake import start_prebuild
from stack.localcloud.images import docker_client
from stack.proc import StackError
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings


class PreflightReport(BaseModel):
    target: str
    region: str
    account: str
    emulator_endpoint: str | None = None


def _require_tool(name: str, hint: str) -> str:
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if not found:
        raise StackError(f"`{name}` is not installed; {hint}")
    return found


@flow(name="preflight")
@exclusive
def preflight(settings: StackSettings | None = None, prebuild_host_images: bool = False) -> PreflightReport:
    """Check everything the later steps need, before anything is created.

    ``prebuild_host_images`` (bootstrap sets it): once the tools and the Docker engine are
    there, start building the hosts' images in the background for a stack without hosts,
    beside the emulator's start and provision."""
    settings = settings or load_settings()
    log = get_run_logger()
    _require_tool("terraform", "install Terraform >= 1.10 and put it on PATH")
    _require_tool("ansible-playbook", "run bin/setup to install the pinned Python packages")
    endpoint = None
    if settings.target == "local":
        docker_client()  # raises with a clear message when no engine answers
        if prebuild_host_images and start_prebuild(settings):
            log.info("building the hosts' images in the background (baked host, flow runner)")
        st = emulator.up(settings)
        endpoint = st.endpoint
        log.info("emulated cloud %s is %s at %s", emulator.container_name(settings), st.state, endpoint)
    try:
        account = aws.client(settings, "sts").get_caller_identity()["Account"]
    except Exception as exc:  # botocore raises many kinds; all mean "credentials do not work"
        raise StackError(f"AWS credentials do not work in {settings.region}: {exc}. "
                         "Configure them (aws configure / AWS_PROFILE) and run again") from None
    log.info("target %s, region %s, account %s", settings.target, settings.region, account)
    log.info("hosts go into %s", aws.check_placement(settings))
    # The instance type exists there (its memory sets the default worker concurrency).
    log.info("%s: %d MiB, %d flow runs per pool and worker host", settings.instance_type,
             capacity.instance_memory_mib(settings), capacity.worker_concurrency(settings))
    if warning := capacity.overcommit_warning(settings):
        log.warning("%s", warning)
    if settings.target == "aws":
        log.info("%s", aws.check_operator_address(settings, aws.operator_address()))
    # A lower STACK_PREFECT_VERSION than the platform runs is refused here (exit 2).
    log.info("%s", upgrade.check_version_change(settings).describe())
    return PreflightReport(target=settings.target, region=settings.region, account=account,
                           emulator_endpoint=endpoint)


if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.preflight", __doc__)
    main(lambda s: preflight(s))
