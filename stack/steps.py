"""What makes a bootstrap step's work still valid: its key and its probe.

A step's key is a hash of the values it uses: its inputs from earlier steps (configure's
report carries the flow-runner image the worker hosts pulled; register and deploy take that reference),
the values computed for it here (``STEP_VALUES``: the bake key of an AMI bake, the host
image version Terraform gets, the flow-runner image's reference and content hash), the settings, and the files the step
itself consumes (its Terraform, playbooks and roles, prefect.yaml, block definitions, its
own flow module). Bootstrap skips a step when the key equals that of its last successful
run (Prefect's task cache, results persisted on the control plane side in the state
directory) and the step's probe says what it made still exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from stack import aws, capacity, cloudstate, platform, smoke, statebackend, tls
from stack.settings import REPO_ROOT, StackSettings

STEPS = ("preflight", "bake", "provision", "hosts", "configure", "restore", "register", "deploy", "smoke")
# Steps that always run: preflight (cheap checks), restore (one query unless the
# database is empty) and smoke (the full smoke, or a quick health check when nothing
# before it ran).
ALWAYS_RUN = ("preflight", "restore", "smoke")

# The files each step consumes itself, relative to the repository (folders are hashed
# whole). What a step gets through a computed value (an image built from files) is keyed
# by that value instead: STEP_VALUES and the inputs.
STEP_FILES: dict[str, tuple[str, ...]] = {
    # What the AMI bake reads besides its own code is in its key (STEP_VALUES).
    "bake": ("flows/bake.py", "stack/bake.py"),
    # The root modules' .tf files only: their README and terraform tests change no plan.
    "provision": ("terraform/*/*.tf", "flows/provision.py", "stack/terraform.py"),
    "hosts": ("flows/hosts.py", "stack/localcloud/hosts.py", "stack/localcloud/bake.py", "stack/localcloud/images/host"),
    # constraints.txt and locks/: the hosts' Prefect virtualenv installs with one of them as
    # its constraints file; stack/pins.py holds the packages and the caps it installs.
    "configure": ("ansible", "constraints.txt", "locks", "flows/configure.py", "stack/ansible.py", "stack/pins.py"),
    "register": ("blocks", "flows/register.py"),
    "deploy": ("deployments", "flows/testflow.py", "flows/deploy.py"),
}


def _provision_values(settings: StackSettings) -> dict:
    from stack.terraform import host_image_version

    return {"host_image_version": host_image_version(settings)}


def _bake_values(settings: StackSettings) -> dict:
    from stack.bake import bake_key

    return {"bake_key": bake_key(settings) if settings.effective_bake == "ami" else None}


def _configure_values(settings: StackSettings) -> dict:
    from stack.localcloud.flow_runner import flow_runner_identity
    from stack.oncalendar import host_timers

    # The hosts' timers come from settings the key leaves out (CONTROL_PLANE_SETTINGS).
    return {"flow_runner_image": flow_runner_identity(settings), "host_timers": host_timers(settings)}


# Values a step uses that no earlier step hands it, computed from the settings without
# building anything: the bake hashes what an AMI bake reads, provision gives Terraform the host image's version (a new one
# replaces the instances), configure has the worker hosts pull the flow-runner image
# and reports its reference to register and deploy.
STEP_VALUES: dict[str, Callable[[StackSettings], dict]] = {
    "bake": _bake_values,
    "provision": _provision_values,
    "configure": _configure_values,
}
# Settings only the control plane reads, or that reach a step only through the values it
# is given (the schedules reach configure as the hosts' timers, in its STEP_VALUES):
# they are left out of the settings a key hashes.
CONTROL_PLANE_SETTINGS = {"nightly_teardown_cron", "schedule_timezone", "teardown_grace_minutes",
                          "backup_cron", "safety_stop", "lock_wait_seconds", "control_plane_port"}
# Settings that reach no input of a step, left out of that step's key. Terraform is
# given no Prefect version and no worker concurrency (what the hosts boot is
# host_image_version, in provision's STEP_VALUES): an upgrade or a new concurrency plans
# nothing, and skips provision's half a minute of Terraform.
SETTINGS_NOT_READ: dict[str, set[str]] = {"provision": {"prefect_version", "worker_concurrency"}}
# Fields of step results that differ from run to run without meaning a different product.
VOLATILE_FIELDS = {"built", "seconds", "deregistered", "applied", "terraform_processes", "cloud_was_lost", "recap",
                   "changed", "attempts",
                   "upgrade", "started_instances"}


def _hash_path(h, path: Path) -> None:
    """Hash a file, every file of a folder, or the files a glob pattern names."""
    if "*" in path.name or "*" in str(path.parent):
        files = sorted(p for p in REPO_ROOT.glob(str(path.relative_to(REPO_ROOT))) if p.is_file())
    else:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if "__pycache__" in f.parts:
            continue
        h.update(str(f.relative_to(REPO_ROOT)).encode() + b"\0" + f.read_bytes())


def _stable(value):
    if isinstance(value, BaseModel):
        return {k: v for k, v in value.model_dump(mode="json").items() if k not in VOLATILE_FIELDS}
    return value


def step_key(step: str, settings: StackSettings, inputs: tuple = (), values: dict | None = None) -> str:
    """The key of ``step`` for these settings and inputs (see the module docstring).
    ``values``: instead of the step's STEP_VALUES (configure's per-host record passes
    none: the image the hosts pull is among its playbook's variables already)."""
    h = hashlib.sha256(step.encode())
    for rel in STEP_FILES.get(step, ()):
        _hash_path(h, REPO_ROOT / rel)
    if values is None:
        values = STEP_VALUES[step](settings) if step in STEP_VALUES else {}
    h.update(json.dumps(values, sort_keys=True).encode())
    left_out = CONTROL_PLANE_SETTINGS | SETTINGS_NOT_READ.get(step, set())
    used = {k: v for k, v in settings.model_dump(mode="json").items() if k not in left_out}
    h.update(json.dumps(used, sort_keys=True).encode())
    if step == "configure":
        # A new auth string must reach the hosts' env files (hashed, never stored); so must
        # a new CA. Both are read from their caches, which bootstrap fills first
        # (platform.make_stack_secrets): computing a key makes nothing.
        h.update(platform.auth_string_digest(settings))
        h.update(tls.ca_fingerprint(settings).encode())
    for value in inputs:
        h.update(json.dumps(_stable(value), sort_keys=True).encode())
    return f"{settings.name_prefix}-{step}-{h.hexdigest()[:24]}"


# --- probes: cheap checks that what a step made still exists --------------------------
# Each takes the settings and the step's last result.
def bake_probe(settings: StackSettings, baked) -> bool:
    """The AMI it found or made is still there (the emulator forgets its AMIs when it
    restarts; someone may deregister one), with the twin's image of it on local."""
    if baked.method != "ami":
        return True
    from stack import bake

    found = bake.find_ami(settings, baked.key or "")
    if found is None or found["ImageId"] != baked.ami_id:
        return False
    if settings.target == "local":
        from stack.localcloud import hosts as host_containers

        return host_containers.ami_image_exists(settings, baked.key or "")
    return True


def provision_probe(settings: StackSettings, provisioned) -> bool:
    """The instances it made are running (and the emulated cloud did not forget them)."""
    if cloudstate.emulator_lost_state(settings):
        return False
    running = {i["id"] for i in aws.running_hosts(settings)}
    return running == {i.id for i in provisioned.instances}


def hosts_probe(settings: StackSettings, booted) -> bool:
    """Every host container it made is running, for the same instance, and no other exists."""
    if settings.target != "local":
        return True
    from stack.localcloud import hosts as host_containers
    from stack.localcloud.images import docker_client

    by_name = host_containers.project_hosts(docker_client(), settings)
    for instance_id, name in booted.hosts.items():
        c = by_name.get(name)
        if c is None or c.status != "running" or c.labels.get(host_containers.LABEL_INSTANCE) != instance_id:
            return False
    # ... and none other: a host left from a larger stack (the same key as before a
    # scale-up and back) must be removed, so the step runs.
    return bool(booted.hosts) and set(by_name) == set(booted.hosts.values())


def flow_runner_image_present(settings: StackSettings, reference: str | None) -> bool:
    """The image a worker host built and pushed is still in the stack's repository. ECR's
    lifecycle policy keeps only the last few images, so after enough image changes (a
    Prefect version tried and left) the one in use may expire; configure then builds it
    again, or a worker host made later could not pull it."""
    from stack.localcloud import flow_runner

    if not reference or not flow_runner.builds_on_host(settings):
        return True
    url, _, tag = reference.rpartition(":")
    return flow_runner.in_repository(settings, url, tag)


def platform_ready(settings: StackSettings) -> bool:
    return platform.ready(settings, platform.operator_api_url(settings))


async def _platform_objects(settings: StackSettings) -> tuple[dict[str, int | None], set[str], set[str], set[str],
                                                               dict[str, str | None]]:
    from prefect.exceptions import ObjectNotFound

    async with platform.prefect_client(settings, platform.operator_api_url(settings)) as client:
        found = await client.read_work_pools()
        pools = {p.name: p.concurrency_limit for p in found}
        listed = await client.read_deployments()
        deployments = {f"{d.name}" for d in listed}
        # The images the Docker pool and case 4 run (a key that matches an older success
        # may meet a platform that a later run changed: its images must be the key's).
        images = {"pool": next((p.base_job_template.get("variables", {}).get("properties", {}).get("image", {})
                                .get("default") for p in found if p.name == platform.DOCKER_POOL), None),
                  "case": next((d.job_variables.get("image") for d in listed if d.name == smoke.DOCKER_CASE), None)}
        blocks = set()
        for slug, name in (("aws-credentials", platform.FLOW_CODE_CREDENTIALS), ("s3-bucket", platform.FLOW_CODE_BUCKET)):
            try:
                await client.read_block_document_by_name(name, slug)
                blocks.add(f"{slug}/{name}")
            except ObjectNotFound:
                pass
        automations = {a.name for a in await client.read_automations()}
        return pools, deployments, blocks, automations, images


def register_probe(settings: StackSettings, registered) -> bool:
    if not platform_ready(settings):
        return False
    pools, _, blocks, automations, images = asyncio.run(_platform_objects(settings))
    # The worker hosts' pools admit what the settings say: after a scale-up and back, the
    # key matches an older success but the limits are the scaled-up ones. Likewise the
    # Docker pool's image after an image change and back.
    limit = capacity.worker_concurrency(settings) * settings.worker_count
    return (set(registered.work_pools) <= set(pools) and set(registered.blocks) <= blocks
            and set(getattr(registered, "automations", [])) <= automations
            and pools.get(platform.PROCESS_POOL) == limit and pools.get(platform.DOCKER_POOL) == limit
            and images["pool"] == getattr(registered, "docker_image", None))


def deploy_probe(settings: StackSettings, deployed) -> bool:
    """The deployments exist and so does the code they pull (a re-created bucket is empty)."""
    if not platform_ready(settings):
        return False
    _, deployments, _, _, images = asyncio.run(_platform_objects(settings))
    if not {name.split("/", 1)[1] for name in deployed.deployments} <= deployments:
        return False
    if images["case"] != getattr(deployed, "docker_image", None):
        return False  # another run deployed case 4 with another image since this result
    try:
        aws.client(settings, "s3").head_object(Bucket=statebackend.code_bucket_name(settings),
                                                Key=f"{platform.CODE_FOLDER}/testflow.py")
    except Exception:  # botocore's ClientError (404) or no bucket at all
        return False
    return True


PROBES: dict[str, Callable[..., bool]] = {
    "bake": bake_probe,
    "provision": provision_probe,
    "hosts": hosts_probe,
    "configure": lambda settings, configured: (
        platform_ready(settings) and tls.server_certificate_current(settings, platform.server_tls_names(settings))
        and flow_runner_image_present(settings, getattr(configured, "flow_runner_image", None))),
    "register": register_probe,
    "deploy": deploy_probe,
}
