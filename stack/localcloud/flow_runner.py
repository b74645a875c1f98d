"""The flow-runner image of the Docker work pool.

Worker hosts pull it from the stack's ECR repository (the data module's; on local the
twin's registry serves it, stack/localcloud/registry.py), before the workers start, on
both targets, under a tag that hashes what it is built from. Where it is built
(STACK_FLOW_RUNNER_BUILD) when the repository lacks that tag:

- ``operator`` (local's default): the image builder on this machine, on the stack's
  Debian base; configure (or bootstrap's prebuild) pushes it.
- ``host`` (aws, the only choice there): the first worker host builds it on Docker Hub's
  ``debian:bookworm-slim`` and pushes it with the operator's short-lived ECR token
  (configure's playbook ``ansible/flow_runner_image.yml``); the instance role only pulls.
  On local the twin's registry stands in for Docker Hub too.

A team may name an image of its own in STACK_FLOW_RUNNER_IMAGE (on aws; Prefect's
official image then installs prefect-aws and s3fs at start through EXTRA_PIP_PACKAGES).
Either way it holds the platform's Prefect, not the operator's.
"""

from __future__ import annotations

import json
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


def dockerfile() -> Path:
    from stack.localcloud import images

    return images.IMAGES_DIR / "flow-runner" / "Dockerfile"


# What a worker host builds on: Docker Hub's Debian, as on aws; on local the twin's
# registry serves the stack's Debian base under the same repository name.
HOST_BUILD_BASE = "debian:bookworm-slim"
DOCKER_HUB_STAND_IN = ("library/debian", "bookworm-slim")


def builds_on_host(settings: StackSettings) -> bool:
    """The stack's image, built on a worker host (aws; local with STACK_FLOW_RUNNER_BUILD=host)."""
    if settings.target != "local" and settings.flow_runner_image:
        return False  # the team's own image
    return settings.effective_flow_runner_build == "host"


def _uv_package() -> str:
    """The uv that installs the image's packages: constraints.txt's pin (the operator's)."""
    return pinned_versions(("uv",))[0]


def host_build_tag(settings: StackSettings) -> str:
    """The tag of the image a worker host builds: a hash of its Dockerfile, the base's
    name (not its content: Docker Hub moves bookworm-slim under the same name), the
    packages, their constraints and the uv that installs them; the same on both targets.
    Not images.image_tag: that hashes this machine's uv binary (a build-context extra),
    which differs with the operator's OS, where the host installs the same pinned uv."""
    import hashlib

    h = hashlib.sha256()
    h.update(dockerfile().read_bytes())
    h.update(platform_constraints(settings.prefect_version).read_bytes())
    h.update(json.dumps({"base": HOST_BUILD_BASE, "uv": _uv_package(), **_build_args(settings)},
                        sort_keys=True).encode())
    return f"host-{h.hexdigest()[:12]}"


def host_build_base(settings: StackSettings, url: str) -> str:
    """The base image reference a worker host builds on."""
    if settings.target != "local":
        return HOST_BUILD_BASE
    name, tag = DOCKER_HUB_STAND_IN
    return f"{registry.registry_host(url)}/{name}:{tag}"


def host_build_vars(settings: StackSettings, image: FlowRunnerImage, url: str, password_file: Path,
                    user: str) -> dict:
    """The flow_runner_image role's variables (ansible/roles/flow_runner_image)."""
    return {
        "flow_runner_image_reference": image.reference,
        "flow_runner_image_base": host_build_base(settings, url),
        "flow_runner_image_packages": _build_args(settings)["PACKAGES"],
        "flow_runner_image_dockerfile": str(dockerfile()),
        "flow_runner_image_constraints": str(platform_constraints(settings.prefect_version)),
        "flow_runner_image_registry": registry.registry_host(url),
        "flow_runner_image_registry_user": user,
        "flow_runner_image_password_file": str(password_file),
        "flow_runner_image_uv_package": _uv_package(),
    }


def registry_login(settings: StackSettings) -> tuple[str, str]:
    """The operator's ECR login (user, password): a token valid for 12 hours, for one push."""
    import base64

    from stack import aws

    data = aws.client(settings, "ecr").get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    return user, password


def in_repository(settings: StackSettings, url: str, tag: str) -> bool:
    """Whether the stack's repository holds ``tag``: ECR on aws, the twin's registry on local."""
    if settings.target == "local":
        return registry.has_image(settings, registry.ensure(settings, url), repository_name(settings), tag)
    from stack import aws

    found = aws.client(settings, "ecr").batch_get_image(
        repositoryName=repository_name(settings), imageIds=[{"imageTag": tag}],
        acceptedMediaTypes=["application/vnd.docker.distribution.manifest.v2+json",
                            "application/vnd.oci.image.manifest.v1+json"])
    return bool(found.get("images"))


def ensure_docker_hub_stand_in(settings: StackSettings, url: str) -> None:
    """On local, before a worker host builds: the stack's Debian base in the twin's
    registry as ``library/debian:bookworm-slim``, which the host pulls in place of
    Docker Hub's (the twin reaches no registry on the internet)."""
    from stack.localcloud.images import ensure_base_image

    name, tag = DOCKER_HUB_STAND_IN
    endpoint = registry.ensure(settings, url)
    with _publishing:
        if not registry.has_image(settings, endpoint, name, tag):
            _push(settings, ensure_base_image(docker_client()), endpoint, name, tag, url)


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
    if builds_on_host(settings):
        return {"content": host_build_tag(settings), "built_on": "host"}
    if settings.target != "local":
        return {"reference": settings.flow_runner_image}
    content = image_tag("flow-runner", build_args=_build_args(settings), files=_build_files(settings))
    return {"reference": settings.flow_runner_image or content, "content": content}


def flow_runner_image(settings: StackSettings) -> FlowRunnerImage:
    """The flow-runner image on this machine, built first when it does not exist yet
    (local); on aws the team's own (STACK_FLOW_RUNNER_IMAGE)."""
    if settings.target != "local":
        if not settings.flow_runner_image:
            raise StackError("on aws the stack's flow-runner image is built on a worker host, not here")
        return FlowRunnerImage.of(settings.flow_runner_image, settings)
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
    if builds_on_host(settings):
        return FlowRunnerImage(f"{url or repository_url(settings)}:{host_build_tag(settings)}")
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
    the team's own image (STACK_FLOW_RUNNER_IMAGE), as it is."""
    if settings.target != "local":
        return image
    with _publishing:
        published = published_image(settings, url)
        tag = published.reference.rsplit(":", 1)[1]
        endpoint = registry.ensure(settings, url)
        name = repository_name(settings)
        _remove_old_archives()
        if not registry.has_image(settings, endpoint, name, tag):
            _push(settings, image.reference, endpoint, name, tag, url)
        return published


def _push(settings: StackSettings, local_ref: str, endpoint: str, name: str, tag: str, url: str) -> None:
    """Push the local image ``local_ref`` to the twin's registry as ``name:tag``."""
    pushed_as = f"{endpoint}/{name}:{tag}"
    client = docker_client()
    client.images.get(local_ref).tag(pushed_as)
    try:
        get_logger().info("pushing image %s to the stack's registry as %s:%s", local_ref, name, tag)
        done = subprocess.run(["docker", "push", "--quiet", pushed_as], capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"could not push image {local_ref} to {endpoint} (the stand-in for {url}): "
                             f"{done.stderr.strip()}; see: docker logs {registry.container_name(settings)}")
    finally:
        client.images.remove(pushed_as)  # only the name: the builder's tag keeps the image


def _remove_old_archives() -> None:
    """``docker save`` archives (about 430 MB each) that earlier versions of the stack kept
    to stream the image into the hosts; nothing reads them now."""
    import os

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prefect-aws-stack" / "images"
    for old in cache.glob("stack-flow-runner-*.tar"):
        old.unlink(missing_ok=True)
