"""Teardown: two lifetimes.

    python -m flows.teardown              # the compute: instances, security group, key pair,
                                          # instance role, attachment, host containers.
                                          # The data (database volume, code bucket with its
                                          # backups) is kept; a backup is taken first.
    python -m flows.teardown --all        # everything, data included (asks; --yes for scripts)
    python -m flows.teardown --emulator   # ... and stop the emulated cloud (local)

Twice is fine: a second teardown finds nothing to destroy. Also served on the control
plane on a nightly schedule (STACK_NIGHTLY_TEARDOWN_CRON); a scheduled run that starts
more than STACK_TEARDOWN_GRACE_MINUTES late (the machine was asleep, the runner down)
destroys nothing and ends Skipped, so it never hits a stack someone is standing up.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Completed
from pydantic import BaseModel

from flows.backup import backup
from flows.provision import compute_inputs, stand_in_repository_arn, terraform_init
from stack import accountsecrets, aws, backups, bake, cloudstate, platform, statebackend, tls
from stack.localcloud import emulator, registry
from stack.localcloud import hosts as host_containers
from stack.localcloud import loadbalancer
from stack.proc import StackError
from stack.lock import stack_lock
from stack.settings import StackSettings, load_settings
from stack.terraform import COMPUTE, DATA, Terraform, ssh_key_file


class TeardownReport(BaseModel):
    scope: str                          # "compute" or "all"
    destroyed: list[str] = []           # Terraform root modules destroyed
    hosts_removed: list[str] = []
    backup: str | None = None           # location of the backup taken first
    data_removed: list[str] = []        # data volume, local backup copies (--all)
    terraform_processes: int = 0


def overdue_by(settings: StackSettings) -> dt.timedelta | None:
    """How late this run started, when it is a scheduled deployment run later than the grace."""
    if not flow_run.get_id() or not deployment.get_id():
        return None
    scheduled = flow_run.scheduled_start_time
    late = dt.datetime.now(dt.UTC) - scheduled
    return late if late > dt.timedelta(minutes=settings.teardown_grace_minutes) else None


def _server_running(settings: StackSettings) -> bool:
    server = platform.running_server(settings)
    if server is None or settings.target != "local":
        return server is not None
    c = host_containers.project_hosts(host_containers.docker_client(), settings).get(server["name"])
    return c is not None and c.status == "running"


def _destroy(tf: Terraform) -> None:
    tf.prepare()
    terraform_init(tf)
    tf.destroy()


@flow(name="teardown")
def teardown(settings: StackSettings | None = None, destroy_data: bool = False, stop_emulator: bool = False,
             take_backup: bool = True):
    """Destroy the compute (keeping the data), or with ``destroy_data`` everything."""
    settings = settings or load_settings()
    log = get_run_logger()
    late = overdue_by(settings)
    if late is not None:
        minutes = int(late.total_seconds() // 60)
        message = (f"overdue: started {minutes} min after its scheduled time (grace "
                   f"{settings.teardown_grace_minutes} min), so skipped; nothing was destroyed")
        log.warning("%s", message)
        return Completed(name="Skipped", message=message)

    aws.check_credentials(settings, "the teardown did not start")
    with stack_lock(settings):
        return _teardown(settings, destroy_data, stop_emulator, take_backup)


def _teardown(settings: StackSettings, destroy_data: bool, stop_emulator: bool, take_backup: bool) -> TeardownReport:
    log = get_run_logger()
    report = TeardownReport(scope="all" if destroy_data else "compute")
    data, compute = Terraform(settings, DATA), Terraform(settings, COMPUTE)
    # The states are in the state bucket; an emulated cloud that is not running, or that
    # restarted, holds no resource and no state: nothing there to destroy.
    cloud_up = settings.target != "local" or emulator.status(settings).state == "running"
    if settings.target == "local" and cloud_up:
        cloudstate.forget_if_lost(settings)
    has_compute = cloud_up and compute.has_state()
    has_data = cloud_up and data.has_state()
    # What the last apply gave the compute module; from the data module's outputs when
    # this machine has no working copy (another clone, or .stack/ deleted).
    compute.inputs = compute.last_inputs() or (
        compute_inputs(settings, data.state_outputs(), settings.effective_ami_id) if has_data else {})
    if compute.inputs:
        compute.inputs.setdefault("flow_runner_repository_arn", stand_in_repository_arn(settings))
    # --all destroys the backups with the data: a backup first would only be destroyed too
    # (and would stop a teardown of a half-made stack whose server was never configured).
    if has_compute and take_backup and not destroy_data and _server_running(settings):
        try:
            report.backup = backup(settings).location
        except Exception as exc:
            raise StackError(f"the backup before teardown failed, so nothing was destroyed: {exc}. "
                             "Fix it, or run python -m flows.teardown --no-backup") from None
    elif has_compute:
        log.info("no running server: no backup taken (the data volume is kept)")

    if has_compute:
        _destroy(compute)
        report.destroyed.append(COMPUTE)
    else:
        log.info("compute: nothing to destroy")
    if settings.target == "local":
        report.hosts_removed = host_containers.remove_all(settings)
        if report.hosts_removed:
            log.info("removed host containers and their root volumes: %s", ", ".join(report.hosts_removed))
        if lbs := loadbalancer.remove_all(settings):
            log.info("removed load balancer containers: %s", ", ".join(lbs))

    if destroy_data:
        if has_data:
            # The bucket is emptied here, after --all's question, never by force_destroy.
            if objects := statebackend.empty_bucket(settings, statebackend.code_bucket_name(settings)):
                report.data_removed.append(f"{objects} objects of bucket {statebackend.code_bucket_name(settings)}")
            _destroy(data)
            report.destroyed.append(DATA)
            statebackend.forget_code_bucket_name(settings)  # a new stack of this prefix names its own
        if cloud_up:
            # The baked AMIs (and a builder an interrupted bake left): Terraform made none.
            bake.remove_builders(settings)
            if amis := bake.deregister(settings, bake.project_amis(settings)):
                report.data_removed.append(f"baked AMIs {', '.join(amis)}")
            if deleted := accountsecrets.delete_all(settings):
                report.data_removed.append(f"secrets {', '.join(deleted)}")
            # Their caches too, or the next command would store the old values again.
            for cache in (platform.auth_file(settings), ssh_key_file(settings).parent, tls.tls_dir(settings)):
                shutil.rmtree(cache, ignore_errors=True) if cache.is_dir() else cache.unlink(missing_ok=True)
            if statebackend.delete_state_bucket(settings):
                report.data_removed.append(f"state bucket {statebackend.state_bucket_name(settings)}")
        if settings.target == "local":
            host_containers.remove_builder(settings)
            host_containers.remove_ami_images(settings, keep=set())
        if settings.target == "local" and host_containers.remove_data_volume(settings, settings.data_volume_name):
            report.data_removed.append(f"volume {settings.data_volume_name}")
        if settings.target == "local" and registry.down(settings, with_images=True):
            report.data_removed.append(f"the twin's registry and its images ({registry.volume_name(settings)})")
        if copies := backups.delete_all_local(settings):
            report.data_removed.append(f"{copies} local backup copies")
        log.warning("destroyed the platform's data: %s", ", ".join(report.destroyed + report.data_removed) or "none left")
    elif has_data:
        log.info("kept the data: volume %s and bucket %s (teardown --all destroys them)",
                 settings.data_volume_name, statebackend.code_bucket_name(settings))
    if stop_emulator and settings.target == "local":
        registry.down(settings)  # its images stay on their volume, as ECR's would
        emulator.down(settings)
        log.info("emulated cloud stopped")
    report.terraform_processes = compute.processes + data.processes
    return report


def confirm_destroy_data(settings: StackSettings, yes: bool) -> None:
    """--all destroys the team's run history: say so, and ask unless --yes."""
    bucket = statebackend.code_bucket_name_or_none(settings) or "of flow code"
    warning = (f"teardown --all destroys the platform's DATA of stack {settings.name_prefix}: the database volume "
               f"{settings.data_volume_name}, the bucket {bucket} with every backup, the flow-runner image "
               f"repository {settings.name_prefix}/flow-runner with every image in it (yours too), "
               f"and the local backup copies. This cannot be undone.")
    print(f"warning: {warning}", file=sys.stderr)
    if yes:
        return
    if not sys.stdin.isatty():
        print("error: --all needs --yes when not run from a terminal", file=sys.stderr)
        sys.exit(2)
    answer = input(f"type the stack's name prefix ({settings.name_prefix}) to destroy everything: ")
    if answer.strip() != settings.name_prefix:
        print("teardown cancelled: nothing was destroyed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    from stack.cli import main, step_parser

    parser = step_parser("flows.teardown", __doc__)
    parser.add_argument("--all", action="store_true", help="also destroy the data: database volume, bucket, backups")
    parser.add_argument("--yes", action="store_true", help="do not ask before --all destroys the data")
    parser.add_argument("--emulator", action="store_true", help="also stop the emulated cloud (local)")
    parser.add_argument("--no-backup", action="store_true", help="do not take a backup first")
    args = parser.parse_args()

    def run(settings: StackSettings):
        if args.all:
            confirm_destroy_data(settings, args.yes)
        return teardown(settings, destroy_data=args.all, stop_emulator=args.emulator, take_backup=not args.no_backup)

    main(run)
