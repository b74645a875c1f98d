"""The emulated cloud: moto's server as a container on the stack's Docker network.

Host containers and flow-run containers reach it by name (``http://aws:5000``); the
operator reaches it on ``127.0.0.1:<emulator_port>``. moto keeps no state across a
restart, so callers compare :func:`session` with what they saw last (see
``stack/cloudstate.py``).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import docker
import docker.errors

from stack.localcloud.images import docker_client, ensure_image
from stack.pins import pinned_versions
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

EMULATOR_ALIAS = "aws"      # its name on the stack network
EMULATOR_INNER_PORT = 5000  # moto_server's port inside the container
LABEL_PROJECT = "stack.project"
LABEL_ROLE = "stack.role"


@dataclass(frozen=True)
class EmulatorStatus:
    state: str                 # "running", "stopped" or "absent"
    endpoint: str
    started_at: str | None = None
    image: str | None = None


def container_name(settings: StackSettings) -> str:
    return f"{settings.name_prefix}-aws"


def inner_endpoint() -> str:
    """The endpoint as seen from containers on the stack network."""
    return f"http://{EMULATOR_ALIAS}:{EMULATOR_INNER_PORT}"


def ensure_network(client: docker.DockerClient, settings: StackSettings):
    try:
        return client.networks.get(settings.docker_network)
    except docker.errors.NotFound:
        return client.networks.create(
            settings.docker_network, driver="bridge",
            labels={LABEL_PROJECT: settings.name_prefix},
        )


def status(settings: StackSettings, client: docker.DockerClient | None = None) -> EmulatorStatus:
    client = client or docker_client()
    endpoint = settings.emulator_endpoint or ""
    try:
        c = client.containers.get(container_name(settings))
    except docker.errors.NotFound:
        return EmulatorStatus("absent", endpoint)
    state = "running" if c.status == "running" else "stopped"
    return EmulatorStatus(state, endpoint, c.attrs["State"].get("StartedAt"), c.image.tags[0] if c.image.tags else None)


def session(settings: StackSettings) -> str | None:
    """Identifies one life of the emulator: its container id and start time. moto keeps
    no state across a restart, so a different session means the cloud forgot everything."""
    try:
        c = docker_client().containers.get(container_name(settings))
    except docker.errors.NotFound:
        return None
    if c.status != "running":
        return None
    return f"{c.id[:12]}@{c.attrs['State'].get('StartedAt')}"


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_healthy(endpoint: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(endpoint):
            return
        time.sleep(0.5)
    raise StackError(f"the emulated cloud at {endpoint} did not answer within {timeout:.0f} s; see `docker logs` of its container")


def ensure_moto_image(client: docker.DockerClient) -> str:
    """The emulator's image: moto's server at the version constraints.txt pins (the
    emulator extra of pyproject.toml; the operator's venv has moto only for the tests)."""
    version = pinned_versions(("moto",))[0].split("==", 1)[1]
    return ensure_image(client, "moto", {"MOTO_VERSION": version})


def up(settings: StackSettings) -> EmulatorStatus:
    """Start the emulator (building its image if needed) and wait until it answers."""
    if settings.target != "local":
        raise StackError("the emulated cloud is only for STACK_TARGET=local")
    client = docker_client()
    log = get_logger()
    image = ensure_moto_image(client)
    net = ensure_network(client, settings)
    name = container_name(settings)
    try:
        c = client.containers.get(name)
        outdated = bool(c.image.tags) and image not in c.image.tags
        if c.status != "running" and outdated:
            log.info("emulator %s was stopped and its image changed; recreating it (moto starts empty)", name)
            c.remove(force=True)
            raise docker.errors.NotFound(name)
        if outdated:
            # Replacing a running emulator would lose the cloud's state: keep it.
            log.info("emulator image %s is newer than the running one; it applies when the emulator is "
                     "next recreated (python -m flows.teardown --emulator)", image)
        if c.status != "running":
            log.warning("emulator %s was stopped; starting it (moto starts empty)", name)
            c.start()
    except docker.errors.NotFound:
        log.info("starting the emulated cloud %s on 127.0.0.1:%s", name, settings.emulator_port)
        c = client.containers.run(
            image, name=name, detach=True, hostname=EMULATOR_ALIAS,
            environment={"MOTO_IAM_LOAD_MANAGED_POLICIES": "true"},
            ports={f"{EMULATOR_INNER_PORT}/tcp": ("127.0.0.1", settings.emulator_port)},
            labels={LABEL_PROJECT: settings.name_prefix, LABEL_ROLE: "emulator"},
            # Comes back with the Docker engine (a reboot of the operator machine).
            restart_policy={"Name": "unless-stopped"}, network=net.name,
        )
        # The alias lets every container on the network use http://aws:5000.
        net.disconnect(c)
        net.connect(c, aliases=[EMULATOR_ALIAS])
    wait_healthy(settings.emulator_endpoint or "")
    return status(settings, client)


def down(settings: StackSettings) -> None:
    """Remove the emulator container (its state goes with it) and the stack network if unused."""
    client = docker_client()
    try:
        client.containers.get(container_name(settings)).remove(force=True)
    except docker.errors.NotFound:
        pass
    try:
        net = client.networks.get(settings.docker_network)
        net.reload()
        if not net.containers:
            net.remove()
    except docker.errors.NotFound:
        pass


def project_hosts(client: docker.DockerClient, settings: StackSettings) -> dict[str, docker.models.containers.Container]:
    """The project's host containers (stack/localcloud/hosts.py makes them), by name."""
    found = client.containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={settings.name_prefix}", f"{LABEL_ROLE}=host"]})
    return {c.name: c for c in found}
