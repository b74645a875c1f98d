"""Emulated EC2 hosts: one systemd container per running instance of the project.

A container is named and hostnamed by its instance's Name tag (``prefect2-ec2-0``),
labelled with the instance id, on the stack network, with ``/var/lib/docker`` on a named
volume (Docker inside needs overlay2, not vfs). The server host publishes 4200 on
``127.0.0.1:<platform_port>`` only. :func:`reconcile` makes the containers match the
instances: it removes containers whose instance is gone, (re)creates missing, stopped or
outdated ones, and leaves matching ones alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import docker
import docker.errors

from stack.localcloud.emulator import LABEL_PROJECT, LABEL_ROLE, ensure_network
from stack.localcloud.images import docker_client, ensure_image
from stack.proc import StackError, get_logger, run
from stack.settings import StackSettings

LABEL_INSTANCE = "stack.instance-id"
PLATFORM_INNER_PORT = 4200

# systemd as PID 1 without --privileged (refused here): every capability but
# SYS_RESOURCE, no seccomp/apparmor/masked paths, the host's cgroup tree, tmpfs runtime dirs.
SYSTEMD_RUN_FLAGS = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--cgroupns=host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
]


@dataclass
class HostsReport:
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)  # instance id -> container name


def docker_volume(name: str) -> str:
    return f"{name}-docker"


def project_hosts(client: docker.DockerClient, settings: StackSettings) -> dict[str, docker.models.containers.Container]:
    found = client.containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={settings.name_prefix}", f"{LABEL_ROLE}=host"]})
    return {c.name: c for c in found}


def _remove(client: docker.DockerClient, container, with_volume: bool) -> None:
    name = container.name
    container.remove(force=True)
    if with_volume:
        try:
            client.volumes.get(docker_volume(name)).remove(force=True)
        except docker.errors.NotFound:
            pass


def _create(settings: StackSettings, image: str, instance: dict) -> None:
    name = instance["name"]
    argv = ["docker", "run", "-d", "--name", name, "--hostname", name,
            "--network", settings.docker_network,
            "--label", f"{LABEL_PROJECT}={settings.name_prefix}", "--label", f"{LABEL_ROLE}=host",
            "--label", f"{LABEL_INSTANCE}={instance['id']}", "--label", f"stack.host-role={instance['role']}",
            "-v", f"{docker_volume(name)}:/var/lib/docker", *SYSTEMD_RUN_FLAGS]
    if instance["role"] == "server":
        argv += ["-p", f"127.0.0.1:{settings.platform_port}:{PLATFORM_INNER_PORT}"]
    run([*argv, image, "/sbin/init"], quiet=True)


def wait_booted(name: str, timeout: float = 60) -> None:
    """Wait until systemd in the container has finished booting."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        done = run(["docker", "exec", name, "systemctl", "is-system-running"], ok_codes=range(256), quiet=True)
        state = (done.lines or [""])[-1].strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise StackError(f"host container {name} did not finish booting in {timeout:.0f} s (systemd says {state!r})")


def reconcile(settings: StackSettings, instances: list[dict]) -> HostsReport:
    """Make host containers match the running instances (dicts with id, name, role)."""
    client = docker_client()
    log = get_logger()
    image = ensure_image(client, "host")
    ensure_network(client, settings)
    report = HostsReport()
    wanted = {i["name"]: i for i in instances if i.get("state", "running") == "running"}
    existing = project_hosts(client, settings)

    for name, c in existing.items():
        if name not in wanted or c.labels.get(LABEL_INSTANCE) != wanted[name]["id"]:
            log.info("removing host container %s: its instance is gone", name)
            _remove(client, c, with_volume=True)
            report.removed.append(name)
    existing = project_hosts(client, settings)

    for name, inst in sorted(wanted.items()):
        c = existing.get(name)
        if c is not None and c.status == "running" and image in c.image.tags:
            report.unchanged.append(name)
        else:
            if c is not None:
                why = "stopped" if c.status != "running" else "its image changed"
                log.info("recreating host container %s: %s", name, why)
                _remove(client, c, with_volume=False)
            else:
                log.info("creating host container %s for %s (%s)", name, inst["id"], inst["role"])
            _create(settings, image, inst)
            report.created.append(name)
        report.hosts[inst["id"]] = name
    for name in report.created:
        wait_booted(name)
    return report


def remove_all(settings: StackSettings) -> list[str]:
    """Remove every host container of the project and its Docker volume."""
    client = docker_client()
    names = []
    for name, c in project_hosts(client, settings).items():
        _remove(client, c, with_volume=True)
        names.append(name)
    return names
