"""Step 2, provision: terraform init (only when needed), plan -out with the plan as a
markdown artifact, apply of that plan only when it has changes, outputs as a typed object."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from stack.proc import CommandError
from stack.settings import StackSettings, load_settings
from stack.terraform import PlanResult, Terraform


class Instance(BaseModel):
    id: str
    name: str
    role: str
    private_ip: str | None = None
    public_ip: str | None = None


class ProvisionOutputs(BaseModel):
    """What Terraform created, as later steps read it."""

    instances: list[Instance]
    server_name: str
    bucket_name: str
    security_group_id: str
    instance_role_arn: str
    applied: bool = False             # this run changed the infrastructure
    terraform_processes: int = 0      # each costs seconds of provider start-up


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


@task(name="terraform_apply", **TF_TASK)
def terraform_apply(tf: Terraform, plan: PlanResult) -> None:
    if plan.plan_file is None or not plan.plan_file.exists():
        # A retry after a transient failure: the old plan file is spent; plan again.
        plan = tf.plan()
        if not plan.has_changes:
            return
    tf.apply(plan)


@task(name="terraform_output", **TF_TASK)
def terraform_output(tf: Terraform) -> dict:
    return tf.output()


@flow(name="provision")
def provision(settings: StackSettings | None = None) -> ProvisionOutputs:
    """Create or update the stack's AWS resources with Terraform."""
    settings = settings or load_settings()
    log = get_run_logger()
    tf = Terraform(settings)
    tf.prepare()
    terraform_init(tf)
    plan = terraform_plan(tf)
    create_markdown_artifact(
        key=f"{settings.name_prefix}-terraform-plan", markdown=plan.markdown(),
        description="What the provision step planned",
    )
    if plan.has_changes:
        terraform_apply(tf, plan)
    else:
        log.info("no changes: the infrastructure matches the configuration, nothing applied")
        if plan.plan_file:
            plan.plan_file.unlink(missing_ok=True)
    outputs = ProvisionOutputs(**terraform_output(tf), applied=plan.has_changes,
                               terraform_processes=tf.processes)
    log.info("provisioned %d instances and bucket %s with %d terraform processes",
             len(outputs.instances), outputs.bucket_name, tf.processes)
    return outputs


if __name__ == "__main__":
    from stack.cli import main

    main(lambda s: provision(s))
