"""Emulated EC2 hosts: one systemd container per instance of the project.

A host container *is* the instance: named and hostnamed by its Name tag
(``prefect2-ec2-0``), labelled with the instance id, on the stack network, its writable
layer the root volume, ``/var/lib/docker`` on a per-instance named volume (Docker inside
needs overlay2, not vfs). The server host publishes 4200 on ``127.0.0.1:<platform_port>``
only, and mounts the named Docker volume that stands in for the platform's EBS data
volume (named by its Name tag, which the emulator does not forget, unlike ids) at
:data:`DATA_MOUNT`.

A new host boots like an EC2 instance: before its first start it gets a NoCloud seed
(:func:`nocloud_seed`) made from what EC2 gives an instance, its id, name, user_data and
key pair's public key, so cloud-init creates the ``admin`` user with that key and runs
the user_data, as on aws. Its sshd is published on a loopback port of its own (fixed at
creation, so a restart keeps it); the hosts step records it in the instance's tags, and
Ansible, backups and restores reach every host over SSH on both targets.

:func:`reconcile` treats containers the way EC2 treats instances: a stopped instance's
container is stopped, a running one's is started again (never recreated: its disk is
kept), a terminated instance's is removed with its root volumes, and only a replaced
instance (a new id for that name) gets a new container. The data volume is never removed
here; only ``teardown --all`` does that. Containers restart with the Docker engine.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field

import docker
import docker.errors

from stack.localcloud.emulator import LABEL_PROJECT, LABEL_ROLE, ensure_network, project_hosts
from stack.localcloud.bake import baked_image_tag, host_image
from stack.localcloud.images import docker_client, image_tag
from stack.proc import StackError, get_logger, run
from stack.settings import StackSettings

LABEL_INSTANCE = "stack.instance-id"
LABEL_DATA_VOLUME = "stack.data-volume"
PLATFORM_INNER_PORT = 4200
SSH_INNER_PORT = 22
# Where cloud-init's NoCloud data source reads an instance's data (meta-data, user-data).
NOCLOUD_SEED_DIR = "var/lib/cloud/seed/nocloud"
# Back with the Docker engine (a reboot: systemd exits 130 when the engine stops it), but a
# host that powered itself off (the safety stop's 'systemctl exit 0': exit code 0) stays
# down, like a stopped instance. (unless-stopped would start that one again at once.) A
# container stopped with docker stop stays down until the engine restarts; then it comes
# back, and the next hosts step stops it again if its instance is stopped.
RESTART_POLICY = "on-failure"
# Where the server sees its data volume (the prefect_server role keeps PostgreSQL there).
DATA_MOUNT = "/srv/prefect-data"

# systemd as PID 1 without --privileged (refused here): every capability but
# SYS_RESOURCE, no seccomp/apparmor/masked paths, the host's cgroup tree, tmpfs runtime dirs.
SYSTEMD_RUN_FLAGS = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--cgroupns=host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
]


# On aws every host has CPUs of its own; here all hosts share this machine's cores. The
# server host is on the path of everything (configure waits for its API while a worker
# host pulls the flow-runner image; every run talks to it), so when the cores are
# saturated it gets four times a worker host's CPU share (Docker's default is 1024).
SERVER_HOST_CPU_SHARES = 4096


@dataclass
class Reconciled:
    created: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)  # instance id -> container name (running ones)
    ssh_ports: dict[str, int] = field(default_factory=dict)  # instance id -> loopback port of its sshd


@dataclass
class LaunchData:
    """What EC2 gives an instance at boot: its user_data and its key pair's public keys."""
    user_data: str = ""
    public_keys: list[str] = field(default_factory=list)


def docker_volume(name: str) -> str:
    return f"{name}-docker"


def _remove(client: docker.DockerClient, container, with_volume: bool) -> None:
    name = container.name
    container.remove(force=True)
    if with_volume:
        try:
            client.volumes.get(docker_volume(name)).remove(force=True)
        except docker.errors.NotFound:
            pass


def ensure_data_volume(client: docker.DockerClient, settings: StackSettings, name: str):
    """The named Docker volume that stands in for the EBS data volume ``name``."""
    try:
        return client.volumes.get(name)
    except docker.errors.NotFound:
        get_logger().info("creating data volume %s (the platform database's EBS volume)", name)
        return client.volumes.create(name, labels={LABEL_PROJECT: settings.name_prefix, LABEL_DATA_VOLUME: "true"})


def nocloud_seed(instance: dict, launch: LaunchData) -> bytes:
    """A tar of the NoCloud seed of ``instance``: cloud-init reads the instance id (a new
    id is a new instance: new host keys, the user_data runs), the hostname, the public
    keys of the default user and the user_data from it."""
    import yaml

    meta = {"instance-id": instance["id"], "local-hostname": instance["name"], "public-keys": launch.public_keys}
    files = {"meta-data": yaml.safe_dump(meta).encode(), "user-data": launch.user_data.encode()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{NOCLOUD_SEED_DIR}/{name}")
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_port(container) -> int | None:
    """The loopback port a host container's sshd is published on (None: a host made
    before hosts had one)."""
    bindings = (container.attrs["HostConfig"].get("PortBindings") or {}).get(f"{SSH_INNER_PORT}/tcp") or []
    return int(bindings[0]["HostPort"]) if bindings and bindings[0].get("HostPort") else None


def _create(settings: StackSettings, image: str, instance: dict, data_volume: str | None,
            launch: LaunchData, kind: str = "host") -> None:
    name = instance["name"]
    # A new machine for this instance id makes new host keys at its first boot (cloud-init):
    # forget the old machine's, filed under the instance id, or SSH refuses the new one.
    from stack.hostexec import known_hosts_file

    if known_hosts_file(settings).exists():
        subprocess.run(["ssh-keygen", "-R", instance["id"], "-f", str(known_hosts_file(settings))],
                       capture_output=True, check=False)
    argv = ["docker", "create", "--name", name, "--hostname", name,
            "--network", settings.docker_network,
            # Comes back with the Docker engine, like an instance after a host reboot;
            # one that powered itself off stays down (RESTART_POLICY).
            "--restart", RESTART_POLICY,
            "--label", f"{LABEL_PROJECT}={settings.name_prefix}", "--label", f"{LABEL_ROLE}={kind}",
            "--label", f"{LABEL_INSTANCE}={instance['id']}", "--label", f"stack.host-role={instance['role']}",
            # sshd on a loopback port named here, not left to Docker: a restart keeps it.
            "-p", f"127.0.0.1:{free_loopback_port()}:{SSH_INNER_PORT}",
            "-v", f"{docker_volume(name)}:/var/lib/docker", *SYSTEMD_RUN_FLAGS]
    if instance["role"] == "server":
        argv += ["--cpu-shares", str(SERVER_HOST_CPU_SHARES),
                 "-p", f"127.0.0.1:{settings.platform_port}:{PLATFORM_INNER_PORT}"]
        if data_volume:
            argv += ["-v", f"{data_volume}:{DATA_MOUNT}"]
    run([*argv, image, "/sbin/init"], quiet=True)
    container = docker_client().containers.get(name)
    try:
        # The seed goes onto the host's own disk (like a config drive that stays attached):
        # a reboot finds it again, and nothing outside the container is needed.
        container.put_archive("/", nocloud_seed(instance, launch))
        container.start()
    except Exception:
        container.remove(force=True)  # no half-made host: the next reconcile creates it again
        raise


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


def reconcile(settings: StackSettings, instances: list[dict], data_volume: str | None = None,
              launch_data=lambda instance: LaunchData()) -> Reconciled:
    """Make host containers follow the instances (dicts with id, name, role, state), the
    server's with the named data volume ``data_volume`` mounted. ``launch_data(instance)``
    gives what EC2 gives a new instance at boot (user_data, public keys)."""
    client = docker_client()
    log = get_logger()
    # Baked only when a host container is to be created (a bake takes minutes, once).
    latest_bake = baked_image_tag(settings, image_tag("host")) if settings.effective_bake == "container" else None
    ensure_network(client, settings)
    if data_volume:
        ensure_data_volume(client, settings, data_volume)
    report = Reconciled()
    live = {i["name"]: i for i in instances if i.get("state", "running") in ("pending", "running", "stopping", "stopped")}
    existing = project_hosts(client, settings)

    for name, c in existing.items():
        inst = live.get(name)
        if inst is None:
            log.info("removing host container %s and its root volumes: its instance is terminated", name)
        elif c.labels.get(LABEL_INSTANCE) != inst["id"]:
            log.info("instance %s was replaced (%s -> %s): a new host container with a new root volume; "
                     "the data volume is kept", name, c.labels.get(LABEL_INSTANCE), inst["id"])
        else:
            continue
        _remove(client, c, with_volume=True)
        report.removed.append(name)
    existing = project_hosts(client, settings)

    for name, inst in sorted(live.items()):
        c = existing.get(name)
        if c is not None and c.attrs["HostConfig"].get("RestartPolicy", {}).get("Name") != RESTART_POLICY:
            c.update(restart_policy={"Name": RESTART_POLICY})  # a host made before hosts had one
        wants_running = inst.get("state", "running") in ("pending", "running")
        if c is None:
            if not wants_running:
                continue  # a stopped instance that never had a container: nothing to stop
            log.info("creating host container %s for %s (%s)", name, inst["id"], inst["role"])
            _create(settings, image_for_instance(settings, inst), inst, data_volume if inst["role"] == "server" else None,
                    launch_data(inst))
            report.created.append(name)
        elif wants_running and c.status != "running":
            log.info("starting host container %s again: its instance %s is running (its disk is kept)",
                     name, inst["id"])
            c.start()
            report.started.append(name)
        elif not wants_running and c.status == "running":
            log.info("stopping host container %s: its instance %s is %s", name, inst["id"], inst["state"])
            c.stop()
            report.stopped.append(name)
        else:
            if wants_running and latest_bake and latest_bake not in c.image.tags:
                # A new bake only speeds up new hosts: this one keeps what it booted and
                # configure installs the difference. (A new stock host image replaces the
                # instances in provision.)
                log.info("host container %s was booted from an older baked image than %s; configure "
                         "applies the difference", name, latest_bake)
            report.unchanged.append(name)
        if wants_running:
            report.hosts[inst["id"]] = name
            port = ssh_port(client.containers.get(name))
            if port:
                report.ssh_ports[inst["id"]] = port
    for name in report.created + report.started:
        wait_booted(name)
    return report


def powered_off_by_themselves(settings: StackSettings) -> dict[str, dict]:
    """Host containers whose host powered itself off (systemd exited with 0: the safety
    stop), by instance id: {name, at} with the time it stopped."""
    out = {}
    for name, c in project_hosts(docker_client(), settings).items():
        state = c.attrs["State"]
        if c.status == "exited" and state.get("ExitCode") == 0 and c.labels.get(LABEL_INSTANCE):
            out[c.labels[LABEL_INSTANCE]] = {"name": name, "at": state.get("FinishedAt", "")[:19] + "Z"}
    return out


def record_self_stopped(settings: StackSettings) -> list[str]:
    """What EC2 does when an instance powers itself off (instance_initiated_shutdown_behavior
    = "stop"): the instance becomes stopped. The emulator cannot see inside a container,
    so the twin tells it (StopInstances) for each host that powered itself off while its
    instance still runs, once per poweroff: the tag SELF_STOP_TAG keeps the poweroff's time,
    so an instance started again since (its container not yet) is not stopped again.
    Returns the names of the hosts recorded."""
    from stack import aws

    off = powered_off_by_themselves(settings)
    if not off:
        return []
    ec2 = aws.client(settings, "ec2")
    recorded = []
    # A filter, not InstanceIds: an emulator that restarted has forgotten these ids (and
    # answers NotFound to a lookup by id); then there is nothing to record.
    for page in ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": sorted(off)}]):
        for res in page["Reservations"]:
            for inst in res["Instances"]:
                host = off[inst["InstanceId"]]
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                if inst["State"]["Name"] not in ("pending", "running") or tags.get(aws.SELF_STOP_TAG) == host["at"]:
                    continue
                ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
                ec2.create_tags(Resources=[inst["InstanceId"]], Tags=[{"Key": aws.SELF_STOP_TAG, "Value": host["at"]}])
                get_logger().info("host %s (%s) powered itself off at %s: its instance is recorded as stopped",
                                  host["name"], inst["InstanceId"], host["at"])
                recorded.append(host["name"])
    return sorted(recorded)


def remove_data_volume(settings: StackSettings, name: str) -> bool:
    """Remove the named Docker volume that stands in for the data volume (teardown --all)."""
    client = docker_client()
    try:
        client.volumes.get(name).remove(force=True)
        return True
    except docker.errors.NotFound:
        return False


def remove_all(settings: StackSettings) -> list[str]:
    """Remove every host container of the project and its Docker volume."""
    client = docker_client()
    names = []
    for name, c in project_hosts(client, settings).items():
        _remove(client, c, with_volume=True)
        names.append(name)
    return names


# --- the AMI bake's twin (stack/bake.py, flows/bake.py) -------------------------------
# The builder instance is a host container (labelled a builder, so the hosts step leaves
# it alone); CreateImage's AMI is its commit, tagged with the bake key; an instance of
# that AMI boots from the commit.
AMI_IMAGE_REPO = "stack-host-ami"
LABEL_BUILDER = "bake-builder"


def ami_image_tag(settings: StackSettings, key: str) -> str:
    """The twin's image of the stack's AMI baked with ``key`` (one per stack, as AMIs are
    per account: a teardown --all of another stack never takes it)."""
    return f"{AMI_IMAGE_REPO}:{settings.name_prefix}-{key}"


def ami_image_exists(settings: StackSettings, key: str) -> bool:
    from stack.localcloud.images import image_exists

    return image_exists(docker_client(), ami_image_tag(settings, key))


def image_for_instance(settings: StackSettings, instance: dict) -> str:
    """What a new host container of ``instance`` boots: with STACK_BAKE=ami the image of
    its AMI (the committed builder of a baked AMI, the stock host image for any other);
    else the baked or stock host image (STACK_HOST_IMAGE)."""
    if settings.effective_bake != "ami":
        return host_image(settings)
    from stack import aws
    from stack.bake import BAKE_KEY_TAG
    from stack.localcloud.images import ensure_image

    images = aws.client(settings, "ec2").describe_images(ImageIds=[instance["image_id"]])["Images"]
    tags = {t["Key"]: t["Value"] for t in (images[0].get("Tags", []) if images else [])}
    if BAKE_KEY_TAG not in tags:
        return ensure_image(docker_client(), "host")  # a stock AMI boots the stock host image
    image = ami_image_tag(settings, tags[BAKE_KEY_TAG])
    if not ami_image_exists(settings, tags[BAKE_KEY_TAG]):
        raise StackError(f"the host image of AMI {instance['image_id']} ({image}) is gone from this machine's "
                         "Docker engine; run python -m flows.bake to bake it again")
    return image


def boot_builder(settings: StackSettings, instance: dict, launch: LaunchData) -> int:
    """Boot the bake's builder instance from the stock host image (what the stock AMI is);
    the loopback port of its sshd."""
    from stack.localcloud.images import ensure_image

    remove_builder(settings)
    _create(settings, ensure_image(docker_client(), "host"), instance, None, launch, kind=LABEL_BUILDER)
    wait_booted(instance["name"])
    port = ssh_port(docker_client().containers.get(instance["name"]))
    assert port is not None  # _create always publishes sshd
    return port


def commit_builder(settings: StackSettings, name: str, key: str) -> str:
    """The builder container as the AMI's host image (CreateImage on the twin)."""
    container = docker_client().containers.get(name)
    repository, tag = ami_image_tag(settings, key).split(":")
    container.commit(repository=repository, tag=tag, changes=['CMD ["/sbin/init"]'],
                     message=f"ansible/bake.yml on the builder {name}")
    return ami_image_tag(settings, key)


def remove_builder(settings: StackSettings) -> list[str]:
    """Remove the project's builder containers and their Docker volumes."""
    client = docker_client()
    found = client.containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={settings.name_prefix}",
                                                                f"{LABEL_ROLE}={LABEL_BUILDER}"]})
    for c in found:
        _remove(client, c, with_volume=True)
    return [c.name for c in found]


def register_lost_ami(settings: StackSettings, key: str) -> dict | None:
    """The emulator keeps no state across a restart, so it forgets the AMIs EC2 would
    keep: when the host image of the bake ``key`` is still here, register it again (a new
    AMI id, the same tags). None when there is no such image."""
    from stack import aws, bake

    if not ami_image_exists(settings, key):
        return None
    ec2 = aws.client(settings, "ec2")
    ami_id = ec2.register_image(Name=bake.ami_name(settings, key), Description="registered again by the twin",
                                RootDeviceName="/dev/xvda", Architecture="x86_64",
                                VirtualizationType="hvm")["ImageId"]
    ec2.create_tags(Resources=[ami_id], Tags=bake.ami_tags(settings, key))
    get_logger().info("the emulated cloud had forgotten the AMI of bake %s: registered its host image again as %s",
                      key, ami_id)
    return bake.find_ami(settings, key)


def remove_ami_images(settings: StackSettings, keep: set[str | None]) -> list[str]:
    """Remove the stack's AMI host images whose bake key is not in ``keep`` (their AMIs
    were deregistered), unless a container still runs one."""
    client = docker_client()
    removed = []
    kept = {ami_image_tag(settings, k) for k in keep if k}
    # The whole tag: a stack prefixed "prefect2-dev" is not "prefect2"'s.
    mine = re.compile(rf"{AMI_IMAGE_REPO}:{re.escape(settings.name_prefix)}-[0-9a-f]{{12}}")
    for image in client.images.list(name=AMI_IMAGE_REPO):
        for tag in image.tags:
            if not mine.fullmatch(tag) or tag in kept:
                continue
            try:
                client.images.remove(tag)
                removed.append(tag)
            except docker.errors.APIError:  # a container uses it: kept until it goes
                pass
    return removed
