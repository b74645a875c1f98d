"""The flow-runner image of the Docker work pool.

On local it is built by the image builder and streamed into each worker host's Docker
engine that lacks it (``docker save | docker load`` over the host's exec channel, no
file in between), after configure has installed that engine. On aws
it is a registry reference (default: Prefect's official image of the pinned version,
which installs prefect-aws and s3fs at start through EXTRA_PIP_PACKAGES).
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass

from stack.pins import pinned_versions
from stack.localcloud.images import docker_client, ensure_image
from stack.hostexec import host_argv
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

FLOW_RUNNER_PACKAGES = ("prefect", "prefect-aws", "s3fs")
OFFICIAL_IMAGE = "prefecthq/prefect:3.8.8-python3.12"


@dataclass(frozen=True)
class FlowRunnerImage:
    reference: str
    extra_pip_packages: str | None = None       # for the official image on aws


def flow_runner_image(settings: StackSettings) -> FlowRunnerImage:
    if settings.target != "local":
        ref = settings.flow_runner_image or OFFICIAL_IMAGE
        extra = " ".join(pinned_versions(("prefect-aws", "s3fs"))) if ref == OFFICIAL_IMAGE else None
        return FlowRunnerImage(ref, extra_pip_packages=extra)
    client = docker_client()
    tag = ensure_image(client, "flow-runner", {"PACKAGES": " ".join(pinned_versions(FLOW_RUNNER_PACKAGES))})
    ref = tag
    if settings.flow_runner_image and settings.flow_runner_image != tag:
        client.images.get(tag).tag(settings.flow_runner_image)
        ref = settings.flow_runner_image
    return FlowRunnerImage(ref)


def load_into_hosts(settings: StackSettings, image: FlowRunnerImage, hosts: list[str],
                    skip_without_engine: bool = False) -> list[str]:
    """Stream the image into each host's Docker engine that lacks it; the hosts it went to.
    ``skip_without_engine``: pass over a host whose engine does not answer yet (configure
    starts this beside the playbook, for hosts whose image already has Docker). Local
    only: on aws the worker pulls the image from its registry."""
    if settings.target != "local":
        return []
    log = get_logger()
    loaded = []
    for host in hosts:
        if skip_without_engine and subprocess.run(host_argv(settings, host, ["docker", "version"]),
                                                  capture_output=True).returncode != 0:
            continue
        probe = subprocess.run(host_argv(settings, host, ["docker", "image", "inspect", image.reference]),
                               capture_output=True)
        if probe.returncode == 0:
            continue
        log.info("streaming image %s into %s (docker save | docker load)", image.reference, host)
        save = subprocess.Popen(["docker", "save", image.reference], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        load = subprocess.run(host_argv(settings, host, ["docker", "load", "--quiet"]), stdin=save.stdout,
                              capture_output=True)
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace").strip()
        save.wait()
        if save.returncode != 0 or load.returncode != 0:
            err = save_err or load.stderr.decode(errors="replace").strip()
            raise StackError(f"could not load image {image.reference} into {host}: {err}; "
                             f"try: {shlex.join(host_argv(settings, host, ['docker', 'info']))}")
        loaded.append(host)
    return loaded
