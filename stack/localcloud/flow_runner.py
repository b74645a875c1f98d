"""The flow-runner image of the Docker work pool.

On local it is built by the image builder and saved once to an archive in the state
directory, which the worker playbook loads into each worker host's Docker engine. On aws
it is a registry reference (default: Prefect's official image of the pinned version,
which installs prefect-aws and s3fs at start through EXTRA_PIP_PACKAGES).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from stack.ansible import pinned_versions
from stack.localcloud.images import docker_client, ensure_image
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

FLOW_RUNNER_PACKAGES = ("prefect", "prefect-aws", "s3fs")
OFFICIAL_IMAGE = "prefecthq/prefect:3.8.8-python3.12"


@dataclass(frozen=True)
class FlowRunnerImage:
    reference: str
    archive: str | None = None                  # docker save archive (local only)
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
    archive = settings.state_path / "images" / (tag.replace(":", "-").replace("/", "-") + ".tar")
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        get_logger().info("saving %s to %s for the worker hosts", ref, archive)
        partial = archive.with_suffix(".partial")
        done = subprocess.run(["docker", "save", "-o", str(partial), ref], capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"`docker save {ref}` failed: {done.stderr.strip()}")
        partial.rename(archive)
        for old in archive.parent.glob("stack-flow-runner-*.tar"):
            if old != archive:
                old.unlink()
    return FlowRunnerImage(ref, archive=str(archive))
