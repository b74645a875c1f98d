"""The provision step: for each Terraform root module, data first (bucket, data volume)
then compute (instances, security group, key pair, role, volume attachment): terraform
init (only when needed), plan -out with the plan as a markdown artifact, apply of that
plan only when it has changes, outputs as a typed object.

On the local target it first checks that the emulated cloud still holds what the states
describe (it forgets everything when it restarts) and re-provisions when it does not."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flows.bake import BakeReport
from stack import aws, backups, bake, cloudstate, platform, statebackend
from stack.localcloud import hosts as host_containers
from stack.proc import CommandError, StackError
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings
from stack.terraform import COMPUTE, COMPUTE_INPUTS, DATA, PlanResult, Terraform, host_image_version


class Instance(BaseModel):
    id: str
    name: str
    role: str
    private_ip: str | None = None
    public_ip: str | None = None


class DataVolume(BaseModel):
    """The platform database's EBS volume (data root module)."""

    id: str
    name: str                         # Name tag; on local also the named Docker volume
    size: int                         # GiB
    availability_zone: str


class ProvisionOutputs(BaseModel):
    """What Terraform created, as later steps read it."""

    instances: list[Instance]
    server_name: str
    bucket_name: str
    data_volume: DataVolume
    security_group_id: str
    instance_role_arns: dict[str, str]   # server, worker
    applied: bool = False             # this run changed the infrastructure
    cloud_was_lost: bool = False      # the emulated cloud had restarted: everything re-created
    terraform_processes: int = 0      # each costs seconds of provider start-up
    created_in_one_apply: list[str] = []  # root modules that had no resources: no separate plan
    started_instances: list[str] = []  # stopped ones (a host's safety stop) started again: same ids, disks kept


def retry_if_transient(task, task_run, state) -> bool:
    """Retry only errors that may pass (emulator restarting, throttling), never config errors."""
    try:
        state.result()
    except CommandError as exc:
        return exc.transient
    except Exception:
        return False
    return False


TF_TASK = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)


@task(name="terraform_init", **TF_TASK)
def terraform_init(tf: Terraform) -> bool:
    return tf.init()


@task(name="terraform_plan", **TF_TASK)
def terraform_plan(tf: Terraform, destroy: bool = False) -> PlanResult:
    return tf.plan(destroy=destroy)


def _plan_then_apply(tf: Terraform) -> PlanResult:
    plan = tf.plan()
    if tf.root == DATA and plan.has_changes:
        refuse_data_loss(tf, plan)
    if plan.has_changes:
        tf.apply(plan)
    return plan


@task(name="terraform_apply", **TF_TASK)
def terraform_apply(tf: Terraform, plan: PlanResult) -> None:
    if plan.plan_file is None or not plan.plan_file.exists():
        # A retry after a transient failure: the old plan file is spent; plan again.
        _plan_then_apply(tf)
        return
    tf.apply(plan)


@task(name="terraform_create", **TF_TASK)
def terraform_create(tf: Terraform) -> PlanResult:
    # A retry after a transient failure that left resources plans first, as any update.
    return _plan_then_apply(tf) if tf.has_state() else tf.create()


@task(name="terraform_output", **TF_TASK)
def terraform_output(tf: Terraform) -> dict:
    return tf.output()


# What the data module holds that cannot be made again, and the settings behind each
# attribute whose change would replace it.
PROTECTED_DATA = {
    "aws_ebs_volume": ("the platform's database volume", {
        "availability_zone": "STACK_AVAILABILITY_ZONE", "size": "STACK_DATA_VOLUME_SIZE"}),
    "aws_s3_bucket": ("the code bucket with every backup", {
        "bucket": "STACK_BUCKET_NAME (derived from STACK_NAME_PREFIX and STACK_REGION when unset)"}),
}


class DataChangeRefused(StackError):
    """A plan would delete or replace the platform's data: refused, nothing applied."""

    exit_code = 2


def refuse_data_loss(tf: Terraform, plan: PlanResult) -> None:
    """Stop before an apply that would delete or replace a protected data resource,
    naming it and the setting that caused it (read from the saved plan's JSON)."""
    doomed = [addr for action, addr in plan.changes
              if action in ("delete", "replace") and addr.split(".")[0] in PROTECTED_DATA]
    if not doomed:
        return
    changes = {rc["address"]: rc for rc in tf.show_plan(plan).get("resource_changes", [])}
    reasons = []
    for addr in doomed:
        what, settings_of = PROTECTED_DATA[addr.split(".")[0]]
        change = changes.get(addr, {}).get("change", {})
        paths = [p[0] for p in change.get("replace_paths", []) if p]
        if paths:
            why = "; ".join(f"{p} {change.get('before', {}).get(p)!r} -> {change.get('after', {}).get(p)!r}"
                            + (f" (set by {settings_of[p]})" if p in settings_of else "") for p in paths)
            reasons.append(f"{addr} ({what}) would be replaced: {why}")
        else:
            reasons.append(f"{addr} ({what}) would be destroyed")
    if plan.plan_file:
        plan.plan_file.unlink(missing_ok=True)
    raise DataChangeRefused(
        "refused, nothing applied: " + "; ".join(reasons) + ". Set the setting back to keep the data; "
        "to destroy the data on purpose, run python -m flows.teardown --all first")


def apply_root_module(settings: StackSettings, tf: Terraform) -> dict:
    """init, plan (as an artifact), apply when the plan has changes; the module's outputs.
    A root module with no resources yet (a new stack; compute after the nightly teardown)
    is created in one apply, whose planned changes make the artifact."""
    log = get_run_logger()
    tf.prepare()
    terraform_init(tf)
    if not tf.has_state():
        plan = terraform_create(tf)
    else:
        plan = terraform_plan(tf)
        if tf.root == DATA and plan.has_changes:
            refuse_data_loss(tf, plan)
        if plan.has_changes:
            terraform_apply(tf, plan)
        else:
            log.info("%s: no changes, the infrastructure matches the configuration", tf.root)
            if plan.plan_file:
                plan.plan_file.unlink(missing_ok=True)
    create_markdown_artifact(
        key=f"{settings.name_prefix}-terraform-plan-{tf.root}", markdown=plan.markdown(),
        description=f"What the provision step planned for the {tf.root} root module",
    )
    tf.applied = plan.has_changes
    return terraform_output(tf)


def keep_backups_for(settings: StackSettings, bucket: str) -> None:
    """The code bucket's lifecycle rule: each backup, and every older version of one,
    expires after STACK_BACKUP_RETENTION_DAYS; flow code is not touched. Put after the
    data module's apply (the bucket and its versioning exist), on every provision: the
    same rule again changes nothing. Not a Terraform resource:
    the AWS provider waits about 55 s after creating one, for S3 to read it back the same
    several times, and the compute module would wait as long on every new stack."""
    days = settings.backup_retention_days
    aws.client(settings, "s3").put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
        "ID": "expire-backups", "Status": "Enabled", "Filter": {"Prefix": backups.BACKUP_PREFIX},
        "Expiration": {"Days": days}, "NoncurrentVersionExpiration": {"NoncurrentDays": days}}]})


def stand_in_repository_arn(settings: StackSettings) -> str:
    """For a destroy of a stack provisioned before the modules had the flow-runner
    repository (its states name none): any valid ARN does, as the policy that names it
    is destroyed too. Provision applies the data module first, so it never needs one."""
    return f"arn:aws:ecr:{settings.region}:000000000000:repository/{settings.name_prefix}/flow-runner"


def compute_inputs(settings: StackSettings, data_outputs: dict, ami_id: str) -> dict:
    """The compute module's variables that come from the data module's outputs, and the
    AMI new instances boot (the bake step's)."""
    volume = data_outputs["data_volume"]
    inputs = {
        "ami_id": ami_id,
        "bucket_arn": data_outputs["bucket_arn"],
        "availability_zone": volume["availability_zone"],
        "data_volume_id": volume["id"],
        "host_image_version": host_image_version(settings),
        "flow_runner_repository_arn": (data_outputs.get("flow_runner_repository") or {}).get(
            "arn", stand_in_repository_arn(settings)),
    }
    assert tuple(inputs) == COMPUTE_INPUTS  # the one list teardown reads them back by
    return inputs


@flow(name="provision")
@exclusive
def provision(settings: StackSettings | None = None, baked: BakeReport | None = None) -> ProvisionOutputs:
    """Create or update the stack's AWS resources: the data module, then the compute module.
    ``baked``: the bake step's report, whose AMI new instances boot (run on its own,
    provision looks the AMI up)."""
    settings = settings or load_settings()
    log = get_run_logger()
    cloud_was_lost = cloudstate.forget_if_lost(settings)
    statebackend.claim_state_dir(settings)
    # Terraform cannot create the bucket that holds its own state: made here, once.
    statebackend.ensure_state_bucket(settings)
    platform.make_stack_secrets(settings)  # the key pair's public half is a compute input
    data_tf = Terraform(settings, DATA)
    data = apply_root_module(settings, data_tf)
    volume = DataVolume(**data["data_volume"])
    keep_backups_for(settings, data["bucket_name"])
    if settings.target == "local":
        host_containers.record_self_stopped(settings)  # what EC2 would already show
    # Bootstrap brings the platform up: instances that stopped (a host's safety stop when
    # the nightly teardown did not come) start again, before Terraform reads their addresses.
    started = aws.start_stopped_instances(settings)
    if started:
        log.info("started the stopped instances %s again (same instances, their disks kept)", ", ".join(started))
    ami_id = baked.ami_id if baked else bake.hosts_ami(settings)
    compute_tf = Terraform(settings, COMPUTE, inputs=compute_inputs(settings, data, ami_id))
    compute = apply_root_module(settings, compute_tf)
    cloudstate.record(settings)
    outputs = ProvisionOutputs(
        instances=compute["instances"], server_name=compute["server_name"], bucket_name=data["bucket_name"],
        data_volume=volume, security_group_id=compute["security_group_id"],
        instance_role_arns=compute["instance_role_arns"], applied=data_tf.applied or compute_tf.applied,
        cloud_was_lost=cloud_was_lost, terraform_processes=data_tf.processes + compute_tf.processes,
        created_in_one_apply=[tf.root for tf in (data_tf, compute_tf) if tf.created_in_one_apply],
        started_instances=started,
    )
    log.info("provisioned %d instances, bucket %s and data volume %s (%s) with %d terraform processes",
             len(outputs.instances), outputs.bucket_name, volume.name, volume.id, outputs.terraform_processes)
    return outputs


if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.provision", __doc__)
    main(lambda s: provision(s))
