"""The preflight step: settings valid, tools present, the cloud answers (emulated on local)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from stack import aws, capacity, checks, upgrade
from stack.localcloud import emulator
from stack.proc import StackError
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings


class PreflightReport(BaseModel):
    target: str
    region: str
    account: str
    emulator_endpoint: str | None = None


@flow(name="preflight")
@exclusive
def preflight(settings: StackSettings | None = None) -> PreflightReport:
    """Check everything the later steps need, before anything is created: the tools,
    then the cloud (settings are checked when they load).

    The tools' checks are stack/checks.py's, which every command runs first; they run
    here again for the control plane's Run button, which does not go through the command
    line. On local the cloud is the emulator, started here: an account that answers is
    what the checks below check."""
    settings = settings or load_settings()
    log = get_run_logger()
    for check in (checks.terraform_binary, checks.ansible_binary, checks.docker_engine):
        try:
            check(settings)
        except checks.InputError as exc:
            raise StackError(str(exc)) from None
    endpoint = None
    if settings.target == "local":
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
