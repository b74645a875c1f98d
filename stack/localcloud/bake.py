"""The baked host image: what configure installs (packages, Docker, PostgreSQL, the
Prefect virtualenv), installed ahead of time, the way teams bake an AMI.

It is made by running ``ansible/bake.yml`` (the roles' own ``tasks/install.yml``) against
a build container of the stock host image and committing the result, so the roles stay
the one source of truth: configure on a baked host runs the same tasks and finds them
done, and on aws the same playbook bakes an AMI on a builder instance (stack/bake.py). The tag hashes the
stock image, the files the bake reads and the pinned packages, so an unchanged bake is
never redone. Hosts that already run keep their image (configure applies a difference);
only new host containers start from a new bake.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import docker.errors

from stack.ansible import install_vars, run_playbook
from stack.bake import BAKE_PLAYBOOK, bake_digest
from stack.localcloud.images import build_lock, docker_client, ensure_image, image_exists, note_current
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

BAKED_REPO = "stack-host-baked"


def baked_image_tag(settings: StackSettings, stock_tag: str) -> str:
    return f"{BAKED_REPO}:{bake_digest(settings, stock_tag)}"


def ensure_baked_host_image(settings: StackSettings) -> str:
    """The tag of the baked host image, baking it first when it does not exist yet."""
    client = docker_client()
    stock = ensure_image(client, "host")
    tag = baked_image_tag(settings, stock)
    with build_lock(tag):
        if not image_exists(client, tag):
            _bake(settings, client, stock, tag)
    note_current(tag)
    return tag


def host_image(settings: StackSettings) -> str:
    """The image new hosts boot (STACK_HOST_IMAGE): the baked one, or the stock one, which
    is what a stock AMI is (configure then installs everything over SSH)."""
    if settings.host_image == "stock":
        return ensure_image(docker_client(), "host")
    return ensure_baked_host_image(settings)


def _bake(settings: StackSettings, client, stock: str, tag: str) -> None:
    log = get_logger()
    started = time.monotonic()
    name = f"{settings.name_prefix}-bake-{tag.split(':')[1]}"
    log.info("baking host image %s: the roles' install tasks on a build container of %s", tag, stock)
    try:
        client.containers.get(name).remove(force=True)  # a bake that was interrupted
    except docker.errors.NotFound:
        pass
    # No systemd here: the packages' scripts then install services without starting
    # them, and the build needs no extra privileges.
    container = client.containers.run(stock, ["sleep", "infinity"], name=name, detach=True,
                                      labels={"stack.role": "bake"})
    try:
        with tempfile.TemporaryDirectory(prefix="stack-bake-") as tmp:
            inventory = Path(tmp) / "bake-inventory.yml"
            inventory.write_text(json.dumps({"all": {"hosts": {name: {
                "ansible_connection": "stack_docker_api", "ansible_host": name, "ansible_user": "root",
            }}}}))
            result = run_playbook(settings, BAKE_PLAYBOOK, extravars=install_vars(settings), inventory=inventory,
                                  env={"ANSIBLE_INVENTORY_ENABLED": "yaml"})
        if result.status != "successful" or name not in result.recap:
            host, task, msg = result.first_failure or (name, BAKE_PLAYBOOK, result.status)
            raise StackError(f"baking the host image failed at task '{task}': {msg}")
        container.commit(repository=BAKED_REPO, tag=tag.split(":")[1], changes=['CMD ["/sbin/init"]'],
                         message=f"ansible/{BAKE_PLAYBOOK} on {stock}")
    finally:
        container.remove(force=True)
    log.info("baked host image %s in %.0f s", tag, time.monotonic() - started)


def _build_ahead(what: str, build, *args) -> None:
    """``build(*args)`` ahead of time. A failure is left to the step that needs the image,
    which builds it again and reports it."""
    try:
        build(*args)
    except Exception as exc:  # noqa: BLE001
        get_logger().info("building the %s ahead of time did not finish (%s); the step that needs it builds it",
                          what, exc)


def prebuild_local_images(settings: StackSettings) -> None:
    """Build what new hosts need ahead of time: the baked host image (the hosts step
    waits for it) and the flow-runner image, pushed to the stack's repository as soon as
    provision has made it (the worker hosts pull it there); both need only the base image. The bake is the longest build,
    so it starts at once, beside the emulator's image. The flow-runner image, needed
    last, waits until the emulator's image (preflight waits for that one) is built:
    three builds side by side on two cores made the emulator's image take 43 to 49 s
    instead of 25 s, and provision started that much later."""
    runner = threading.Thread(target=_build_ahead, args=("flow-runner image", _flow_runner_after_emulator, settings),
                              daemon=True, name="prebuild-flow-runner")
    runner.start()
    if settings.effective_bake == "ami":  # flows.bake boots its builder from the stock host image
        _build_ahead("host image", ensure_image, docker_client(), "host")
    else:
        _build_ahead("host image", host_image, settings)
    runner.join()


def _flow_runner_after_emulator(settings: StackSettings) -> None:
    from stack.localcloud.emulator import ensure_moto_image
    from stack.localcloud.flow_runner import builds_on_host, flow_runner_image, publish_when_ready

    # Waits on the emulator's build when it is under way; builds it first otherwise.
    _build_ahead("emulator's image", ensure_moto_image, docker_client())
    ensure_image(docker_client(), "registry")  # the twin's ECR registry
    if not builds_on_host(settings):  # else a worker host builds it, in configure
        flow_runner_image(settings)
        publish_when_ready(settings)  # once provision has made the repository


def start_prebuild(settings: StackSettings) -> bool:
    """Bootstrap on a stack with no host containers (new, or after the nightly teardown):
    start building the hosts' images in the background, so they are ready by the time
    provision has created the instances (minutes saved on a new machine). Returns
    whether it started. Idempotent: it never starts twice for one stack in a process."""
    from stack.localcloud.emulator import project_hosts

    if settings.target != "local" or settings.name_prefix in _prebuilding:
        return False
    if project_hosts(docker_client(), settings):
        return False
    _prebuilding.add(settings.name_prefix)
    threading.Thread(target=prebuild_local_images, args=(settings,), daemon=True, name="prebuild-images").start()
    return True


_prebuilding: set[str] = set()


def start_early_builds(settings: StackSettings) -> None:
    """``python -m flows.bootstrap``, before the control plane is up: start building, in the
    background, the images the first steps wait for, the emulator's (preflight) and, for a
    stack without hosts, the hosts' (start_prebuild). On a new machine the control plane's
    start (about 15 s) then overlaps the Debian base image's build, which every image
    waits for. Does nothing on aws or when no Docker engine answers (preflight says so)."""
    from stack.localcloud.emulator import ensure_moto_image

    if settings.target != "local":
        return
    try:
        client = docker_client()
    except StackError:
        return
    threading.Thread(target=_build_ahead, args=("emulator's image", ensure_moto_image, client), daemon=True,
                     name="prebuild-emulator").start()
    start_prebuild(settings)
