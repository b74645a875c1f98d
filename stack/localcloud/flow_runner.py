"""The flow-runner image of the Docker work pool.

Worker hosts pull it (the prefect_worker role, before the workers start), on both
targets. On local it is built by the image builder and pushed by configure to the
stack's ECR repository (the data module's), whose images the twin's registry serves
(stack/localcloud/registry.py): the worker hosts pull it the way they pull from ECR. On
aws it is a registry reference (default: Prefect's official image of the platform's
version, STACK_PREFECT_VERSION, which installs prefect-aws and s3fs at start through
EXTRA_PIP_PACKAGES; an image pushed to the stack's repository, named by
STACK_FLOW_RUNNER_IMAGE, is pulled with the instance role). Either way it holds the
platform's Prefect, not the operator's.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from stack.pins import pinned_versions, platform_constraints
from stack.localcloud import registry
from stack.localcloud.images import docker_client, ensure_image, image_tag
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

FLOW_RUNNER_PACKAGES = ("prefect", "prefect-aws", "s3fs")


@dataclass(frozen=True)
class FlowRunnerImage:
    reference: str
    extra_pip_packages: str | None = None       # for the official image on aws

    @classmethod
    def of(cls, reference: str, settings: StackSettings) -> "FlowRunnerImage":
        """The image behind ``reference`` (configure's output): the official image installs
        the pinned prefect-aws and s3fs at start; any other holds them already."""
        constraints = platform_constraints(settings.prefect_version)
        extra = (" ".join(pinned_versions(("prefect-aws", "s3fs"), constraints))
                 if reference == official_image(settings) else None)
        return cls(reference, extra_pip_packages=extra)


def official_image(settings: StackSettings) -> str:
    """Prefect's official image of the platform's version."""
    return f"prefecthq/prefect:{settings.prefect_version}-python3.12"


def _build_args(settings: StackSettings) -> dict[str, str]:
    constraints = platform_constraints(settings.prefect_version)
    return {"PACKAGES": " ".join(pinned_versions(FLOW_RUNNER_PACKAGES, constraints))}


def _build_files(settings: StackSettings) -> dict[str, Path]:
    """The image's constraints file: the platform's pins (constraints.txt, or a lock)."""
    return {"constraints.txt": platform_constraints(settings.prefect_version)}


def flow_runner_identity(settings: StackSettings) -> dict[str, str]:
    """What the flow-runner image is, computed without building it: its reference and, on
    local, the content-hash tag of what it is built from (its Dockerfile, the pins, the
    base image). A step key hashes this value, so any change to what the image is made
    of (even under a fixed STACK_FLOW_RUNNER_IMAGE name) reaches every step that uses it."""
    if settings.target != "local":
        return {"reference": settings.flow_runner_image or official_image(settings)}
    content = image_tag("flow-runner", build_args=_build_args(settings), files=_build_files(settings))
    return {"reference": settings.flow_runner_image or content, "content": content}


def flow_runner_image(settings: StackSettings) -> FlowRunnerImage:
    """The flow-runner image, built first on local when it does not exist yet."""
    if settings.target != "local":
        return FlowRunnerImage.of(settings.flow_runner_image or official_image(settings), settings)
    client = docker_client()
    tag = ensure_image(client, "flow-runner", _build_args(settings), _build_files(settings))
    ref = tag
    if settings.flow_runner_image and settings.flow_runner_image != tag:
        client.images.get(tag).tag(settings.flow_runner_image)
        ref = settings.flow_runner_image
    return FlowRunnerImage(ref)


def repository_name(settings: StackSettings) -> str:
    """The data module's ECR repository of the flow-runner image (terraform/data/ecr.tf)."""
    return f"{settings.name_prefix}/flow-runner"


def repository_url(settings: StackSettings) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com/<prefix>/flow-runner``, as ECR says it."""
    from botocore.exceptions import ClientError

    from stack import aws

    name = repository_name(settings)
    try:
        found = aws.client(settings, "ecr").describe_repositories(repositoryNames=[name])["repositories"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "RepositoryNotFoundException":
            raise
        found = []
    if not found:
        raise StackError(f"the flow-runner image's repository {name} does not exist in ECR: "
                         "python -m flows.provision makes it")
    return found[0]["repositoryUri"]


def published_image(settings: StackSettings, url: str | None = None) -> FlowRunnerImage:
    """The image as the worker hosts know it, without building or pushing anything: on
    local the stack's repository URL (``url``, or asked of ECR) with the image's content
    tag (what ``publish`` pushes); on aws the configured image. What register, deploy
    and the benchmark use when configure's output is not at hand (run alone)."""
    if settings.target != "local":
        return flow_runner_image(settings)
    tag = flow_runner_identity(settings)["content"].rsplit(":", 1)[1]
    return FlowRunnerImage(f"{url or repository_url(settings)}:{tag}")


# One push at a time in this process: bootstrap's prebuild pushes a new stack's image
# while provision runs, and configure's own publish then waits for it and finds the tag.
_publishing = threading.Lock()


def publish_when_ready(settings: StackSettings, timeout: float = 900) -> None:
    """Bootstrap's prebuild, on local: push the image as soon as the stack's CA (its
    secrets, made after preflight) and its repository (provision's data module) exist,
    so that configure of new hosts does not wait for the push (docs/performance.md).
    Gives up quietly after ``timeout``: configure pushes then."""
    from stack import tls

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tls.ca_file(settings).exists():
            try:
                url = repository_url(settings)
            except StackError:
                pass
            else:
                publish(settings, flow_runner_image(settings), url)
                return
        time.sleep(2)


def publish(settings: StackSettings, image: FlowRunnerImage, url: str) -> FlowRunnerImage:
    """The image as the worker hosts pull it. On local: the built ``image`` pushed, under
    its content tag, to the stack's repository at ``url`` (the twin's registry; nothing
    is pushed when the repository has that tag already), and named by that URL. On aws:
    the configured image itself (Prefect's official one by default)."""
    if settings.target != "local":
        return image
    with _publishing:
        published = published_image(settings, url)
        tag = published.reference.rsplit(":", 1)[1]
        endpoint = registry.ensure(settings, url)
        name = repository_name(settings)
        _remove_old_archives()
        if registry.has_image(settings, endpoint, name, tag):
            return published
        pushed_as = f"{endpoint}/{name}:{tag}"
        client = docker_client()
        client.images.get(image.reference).tag(pushed_as)
        try:
            get_logger().info("pushing image %s to the stack's repository %s", image.reference, url)
            done = subprocess.run(["docker", "push", "--quiet", pushed_as], capture_output=True, text=True)
            if done.returncode != 0:
                raise StackError(f"could not push image {image.reference} to {endpoint} (the stand-in for {url}): "
                                 f"{done.stderr.strip()}; see: docker logs {registry.container_name(settings)}")
        finally:
            client.images.remove(pushed_as)  # only the name: the builder's tag keeps the image
        return published


def _remove_old_archives() -> None:
    """``docker save`` archives (about 430 MB each) that earlier versions of the stack kept
    to stream the image into the hosts; nothing reads them now."""
    import os

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prefect-aws-stack" / "images"
    for old in cache.glob("stack-flow-runner-*.tar"):
        old.unlink(missing_ok=True)
