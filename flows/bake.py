"""The bake step: the AMI new hosts boot, with everything configure would install in
place (see stack/bake.py). Found by its key when nothing it reads changed; else a
builder instance from STACK_AMI_ID, ``ansible/bake.yml`` over SSH, EC2 CreateImage, the
builder removed, older AMIs deregistered. Bootstrap runs it before provision, which
gives new instances the AMI.

With STACK_BAKE=container (the local default) or STACK_HOST_IMAGE=stock it bakes no AMI:
the hosts step bakes the container image, or hosts boot STACK_AMI_ID as it is.

    python -m flows.bake
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from stack import aws, platform
from stack import bake as ami_bake
from stack.ansible import (UNREACHABLE_DELAY_SECONDS, UNREACHABLE_RETRIES, AnsibleError, HostsUnreachable,
                           install_vars, retry_if_unreachable, run_playbook)
from stack.localcloud import hosts as host_containers
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings
from stack.terraform import ssh_public_key


class BakeReport(BaseModel):
    method: str                  # ami, container or stock (STACK_BAKE / STACK_HOST_IMAGE)
    ami_id: str                  # what provision gives new instances
    key: str | None = None       # the bake key the AMI is tagged with (ami only)
    built: bool = False          # this run baked it (else it was found)
    seconds: float = 0.0
    deregistered: list[str] = []  # older baked AMIs removed


@task(name="bake_playbook", retries=UNREACHABLE_RETRIES, retry_delay_seconds=UNREACHABLE_DELAY_SECONDS,
      retry_condition_fn=retry_if_unreachable, cache_policy=NO_CACHE)
def bake_playbook(settings: StackSettings, builder: dict) -> None:
    """ansible/bake.yml on the builder over SSH; a lost connection is tried again."""
    with tempfile.TemporaryDirectory(prefix="stack-bake-") as tmp:
        inventory = ami_bake.builder_inventory(settings, builder, Path(tmp) / "bake-inventory.json")
        result = run_playbook(settings, ami_bake.BAKE_PLAYBOOK, extravars=install_vars(settings),
                              inventory=inventory, env={"ANSIBLE_INVENTORY_ENABLED": "yaml"})
    if result.first_failure or result.status != "successful" or builder["name"] not in result.recap:
        host, failed_task, msg = result.first_failure or (builder["name"], ami_bake.BAKE_PLAYBOOK, result.status)
        failure = HostsUnreachable if result.hosts_to_retry() else AnsibleError
        raise failure(f"the bake failed on the builder {host}, task '{failed_task}': {msg}")


def _bake_ami(settings: StackSettings, key: str) -> str:
    """Builder up, playbook, CreateImage; the builder and its key pair and group always go."""
    log = get_run_logger()
    ami_bake.remove_builders(settings)  # what an interrupted bake left
    ami_bake.deregister(settings, ami_bake.failed_amis(settings, key))  # its name is this bake's
    try:
        builder = ami_bake.launch_builder(settings, ssh_public_key(settings))
        log.info("builder %s (%s) started from %s", builder["name"], builder["id"], settings.effective_ami_id)
        if settings.target == "local":
            builder = _boot_twin_builder(settings, builder)
        bake_playbook(settings, builder)
        if settings.target == "local":
            host_containers.commit_builder(settings, builder["name"], key)  # what CreateImage captures
        return ami_bake.create_ami(settings, builder["id"], key)
    finally:
        _remove_builders(settings)


def _remove_builders(settings: StackSettings) -> None:
    """The builder, its key pair and group gone. A failure here is logged, not raised: it
    must not hide the bake's own error, and the next bake (or teardown --all) removes them."""
    try:
        if settings.target == "local":
            host_containers.remove_builder(settings)
        ami_bake.remove_builders(settings)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning("could not remove the AMI builder %s yet (%s); the next bake or teardown --all "
                                 "removes it", ami_bake.builder_name(settings), exc)


def _boot_twin_builder(settings: StackSettings, builder: dict) -> dict:
    """The twin's instance: a host container booted by cloud-init from the builder's key
    pair, its sshd on a loopback port recorded in the instance's tags."""
    user_data, keys = aws.launch_data(settings, builder)
    port = host_containers.boot_builder(settings, builder, host_containers.LaunchData(user_data, keys))
    aws.record_ssh_endpoints(settings, {builder["id"]: port})
    return ami_bake.builder_instance(settings, builder["id"])


@flow(name="bake")
@exclusive
def bake(settings: StackSettings | None = None) -> BakeReport:
    """Make (or find) the AMI new hosts boot."""
    settings = settings or load_settings()
    log = get_run_logger()
    method = settings.effective_bake or "stock"
    if method != "ami":
        log.info("no AMI to bake: %s", "hosts boot STACK_AMI_ID as it is (STACK_HOST_IMAGE=stock)"
                 if method == "stock" else "the hosts step bakes the hosts' container image (STACK_BAKE=container)")
        return BakeReport(method=method, ami_id=settings.effective_ami_id)
    started = time.monotonic()
    platform.make_stack_secrets(settings)  # the builder's key pair is the stack's key (run alone, bake may be first)
    key = ami_bake.bake_key(settings)
    found = ami_bake.find_ami(settings, key)
    if settings.target == "local":
        if found is not None and not host_containers.ami_image_exists(settings, key):
            log.info("the twin's image of AMI %s is gone: baking it again", found["ImageId"])
            ami_bake.deregister(settings, [found])
            found = None
        elif found is None:
            found = host_containers.register_lost_ami(settings, key)  # the emulator forgot it
    built = found is None
    if found is not None:
        ami_id = found["ImageId"]
        if found.get("State") == "pending":  # an interrupted bake's CreateImage
            ami_bake.wait_available(settings, ami_id)
        _remove_builders(settings)  # an interrupted bake may have left its builder running
        log.info("AMI %s is baked from the same stock AMI, roles and pins (%s=%s)", ami_id, ami_bake.BAKE_KEY_TAG, key)
    else:
        log.info("baking an AMI from %s (%s=%s)", settings.effective_ami_id, ami_bake.BAKE_KEY_TAG, key)
        ami_id = _bake_ami(settings, key)
        log.info("baked AMI %s in %.0f s", ami_id, time.monotonic() - started)
    amis = ami_bake.project_amis(settings)
    old = ami_bake.superseded_amis(settings, amis, ami_bake.amis_in_use(settings) | {ami_id})
    deregistered = ami_bake.deregister(settings, old)
    if settings.target == "local":
        host_containers.remove_ami_images(settings, keep={a["tags"].get(ami_bake.BAKE_KEY_TAG) for a in amis
                                                          if a not in old})
    if deregistered:
        log.info("deregistered older baked AMIs %s (the newest %d and those in use are kept)",
                 ", ".join(deregistered), ami_bake.KEEP_AMIS)
    return BakeReport(method="ami", ami_id=ami_id, key=key, built=built, seconds=round(time.monotonic() - started, 1),
                      deregistered=deregistered)


if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.bake", __doc__)
    main(lambda s: bake(s))

