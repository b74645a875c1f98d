"""The flow-runner image of the Docker work pool.

On local it is built by the image builder and streamed into each worker host's Docker
engine that lacks it (``docker load`` over the host's exec channel), after configure
has installed that engine. The stream comes from an archive that ``docker save`` wrote
once, ahead of time (``save_archive``, while provision runs), or, when there is none,
straight from ``docker save``: the save costs 5 to 8 CPU-seconds, which configure then
spends beside its playbook on a machine whose cores the playbook keeps busy. On aws
it is a registry reference (default: Prefect's official image of the platform's version,
STACK_PREFECT_VERSION, which installs prefect-aws and s3fs at start through
EXTRA_PIP_PACKAGES). Either way it holds the platform's Prefect, not the operator's.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stack.pins import pinned_versions, platform_constraints
from stack.localcloud.images import docker_client, ensure_image, image_tag
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

FLOW_RUNNER_PACKAGES = ("prefect", "prefect-aws", "s3fs")
ARCHIVED_REPO = "stack-flow-runner"  # the builder's repository (images.image_tag)


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


def _in_host(host: str, command: list[str]) -> list[str]:
    """argv running ``command`` in a host container. The image goes in by docker exec,
    not SSH: the stand-in for the registry pull a worker does on aws, not part of the
    path Ansible and backups take (that one is SSH on both targets)."""
    return ["docker", "exec", "-i", host, *command]


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
        if skip_without_engine and subprocess.run(_in_host(host, ["docker", "version"]),
                                                  capture_output=True).returncode != 0:
            continue
        probe = subprocess.run(_in_host(host, ["docker", "image", "inspect", image.reference]),
                               capture_output=True)
        if probe.returncode == 0:
            continue
        load_argv = _in_host(host, ["docker", "load", "--quiet"])
        archive = archive_path(image.reference)
        if archive is not None and archive.exists():
            log.info("streaming image %s into %s (docker load, from %s)", image.reference, host, archive)
            with archive.open("rb") as tar:
                load = subprocess.run(load_argv, stdin=tar, capture_output=True)
            saved, save_err = True, ""
        else:
            log.info("streaming image %s into %s (docker save | docker load)", image.reference, host)
            save = subprocess.Popen(["docker", "save", image.reference], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            load = subprocess.run(load_argv, stdin=save.stdout, capture_output=True)
            save.stdout.close()
            save_err = save.stderr.read().decode(errors="replace").strip()
            saved = save.wait() == 0
        if not saved or load.returncode != 0:
            if archive is not None:  # damaged, perhaps: the next load streams from docker save
                archive.unlink(missing_ok=True)
            err = save_err or load.stderr.decode(errors="replace").strip()
            raise StackError(f"could not load image {image.reference} into {host}: {err}; "
                             f"try: {shlex.join(_in_host(host, ['docker', 'info']))}")
        loaded.append(host)
    return loaded


def archive_dir() -> Path:
    """Machine-wide, like the images: every stack of this machine loads the same ones."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "prefect-aws-stack" / "images"


def archive_path(reference: str) -> Path | None:
    """Where ``docker save`` of ``reference`` is kept: only for the builder's tags, which
    are content hashes, so an archive never goes stale under its name. A tag a user
    chose (STACK_FLOW_RUNNER_IMAGE) has none and is streamed live."""
    repo, _, tag = reference.partition(":")
    if repo != ARCHIVED_REPO or not tag.isalnum():
        return None
    return archive_dir() / f"{repo}-{tag}.tar"


def save_archive(image: FlowRunnerImage) -> Path | None:
    """Write ``docker save`` of the local flow-runner image once, atomically, and remove
    the archives of earlier builds. Returns the archive, or None for an image it keeps
    none of (a user's own tag)."""
    path = archive_path(image.reference)
    if path is None:
        return None
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".saving-", suffix=".tar", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        saved = subprocess.run(["docker", "save", "--output", str(partial), image.reference],
                               capture_output=True, text=True)
        if saved.returncode != 0:
            raise StackError(f"could not save image {image.reference} to {path}: {saved.stderr.strip()}")
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    for earlier in path.parent.glob(f"{ARCHIVED_REPO}-*.tar"):
        if earlier != path:
            earlier.unlink(missing_ok=True)
    get_logger().info("saved image %s to %s for configure to stream", image.reference, path)
    return path
