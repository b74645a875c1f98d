"""Host containers and Ansible, for real: Docker, moto, ansible-runner, systemd."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from stack import accountlease, aws, credentials, hostexec, lock, statebackend
from stack.ansible import ANSIBLE_DIR, environment
from stack.localcloud.flow_runner import flow_runner_image, publish, repository_name, repository_url
from stack.localcloud.hosts import SERVER_HOST_CPU_SHARES
from stack.pins import pinned_prefect
from stack.localcloud.images import docker_client, ensure_base_image
from stack.terraform import ssh_public_key
from tests.conftest import REPO, TEST_STACK_ENV, clean_env

pytestmark = pytest.mark.e2e
WORKER, SERVER = "p2test-ec2-1", "p2test-ec2-0"


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, **kw)


def assert_host_configured(name: str, docker: bool) -> None:
    version = sh("docker", "exec", name, "/opt/prefect/venv/bin/python", "-c",
                 "import prefect; print(prefect.__version__)")
    assert version.stdout.strip() == pinned_prefect(), version.stderr
    if docker:
        assert sh("docker", "exec", name, "systemctl", "is-active", "docker").stdout.strip() == "active"


def test_inventory_groups_hosts_by_role(stack):
    # As configure runs it: the SDK's credentials come from this process (stack/credentials.py).
    with credentials.served(stack["settings"]) as aws_env:
        env = {**os.environ, **environment(stack["settings"]), **aws_env}
        proc = sh(str(Path(sys.executable).parent / "ansible-inventory"), "-i", "inventory.aws_ec2.yml", "--graph",
                  cwd=ANSIBLE_DIR, env=env)
    assert proc.returncode == 0, proc.stderr
    graph = proc.stdout
    server_group = graph.split("@role_server:")[1].split("@")[0]
    worker_group = graph.split("@role_worker:")[1].split("@")[0]
    assert SERVER in server_group and WORKER not in server_group
    assert WORKER in worker_group


def test_hosts_are_containers_named_by_instance_with_systemd(stack):
    # The instances as EC2 has them now (an earlier test may have replaced the worker's).
    hosts = {i["id"]: i["name"] for i in aws.running_hosts(stack["settings"])}
    assert sorted(hosts.values()) == [SERVER, WORKER]
    for instance_id, name in hosts.items():
        label = sh("docker", "inspect", "-f", '{{index .Config.Labels "stack.instance-id"}}', name).stdout.strip()
        assert label == instance_id
        assert sh("docker", "exec", name, "hostname").stdout.strip() == name
        assert sh("docker", "exec", name, "ps", "-p", "1", "-o", "comm=").stdout.strip() == "systemd"
    ports = sh("docker", "port", SERVER, "4200").stdout.strip()
    assert ports == f"127.0.0.1:{stack['settings'].platform_port}"
    # The server host gets the larger share of the cores all hosts share here.
    shares = {name: sh("docker", "inspect", "-f", "{{.HostConfig.CpuShares}}", name).stdout.strip()
              for name in (SERVER, WORKER)}
    assert shares == {SERVER: str(SERVER_HOST_CPU_SHARES), WORKER: "0"}  # 0: Docker's default, 1024


def test_hosts_boot_like_ec2_instances_through_cloud_init(stack):
    """Each host got what EC2 gives an instance (its id, user_data and key pair's public
    key) from its NoCloud seed: cloud-init made the AMI's default user with the stack's
    key and sudo, ran the user_data, and made host keys of the host's own."""
    s = stack["settings"]
    ec2 = aws.client(s, "ec2")
    public_key = " ".join(ssh_public_key(s).split()[:2])
    host_keys = set()
    for instance in aws.running_hosts(s):
        name = instance["name"]
        assert sh("docker", "exec", name, "cloud-init", "status").stdout.split() == ["status:", "done"]
        assert sh("docker", "exec", name, "cat", "/var/lib/cloud/data/instance-id").stdout.strip() == instance["id"]
        assert "sudo" in sh("docker", "exec", name, "id", "-nG", "admin").stdout.split()
        authorized = sh("docker", "exec", name, "cat", "/home/admin/.ssh/authorized_keys").stdout
        assert public_key in authorized
        # The user_data EC2 holds for the instance is the one cloud-init ran, and it ran.
        user_data = ec2.describe_instance_attribute(InstanceId=instance["id"], Attribute="userData")
        assert base64.b64decode(user_data["UserData"]["Value"]).decode() == sh(
            "docker", "exec", name, "cat", "/var/lib/cloud/instance/user-data.txt").stdout
        output = sh("docker", "exec", name, "cat", "/var/log/cloud-init-output.log").stdout
        assert "the SSM agent is not installed here" in output
        host_keys.add(sh("docker", "exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1])
    assert len(host_keys) == 2  # not one key baked into the image for every host


def test_ansible_and_the_stack_reach_every_host_over_ssh_on_loopback(stack):
    """The inventory gives each host the loopback port the hosts step tagged; ssh with the
    stack's key (and no other) logs in as admin, sudo makes it root, and the host key is
    filed under the instance id in the stack's own known_hosts."""
    s = stack["settings"]
    with credentials.served(s) as aws_env:
        env = {**os.environ, **environment(s), **aws_env}
        proc = sh(str(Path(sys.executable).parent / "ansible-inventory"), "-i", "inventory.aws_ec2.yml", "--list",
                  cwd=ANSIBLE_DIR, env=env)
    assert proc.returncode == 0, proc.stderr
    hostvars = json.loads(proc.stdout)["_meta"]["hostvars"]

    def value(v):  # ansible-inventory --list marks strings from the cloud as unsafe
        return v.get("__ansible_unsafe", v) if isinstance(v, dict) else v

    for instance in aws.running_hosts(s):
        name = instance["name"]
        published = sh("docker", "port", name, "22/tcp").stdout.split()
        assert published == [f"127.0.0.1:{instance['ssh_port']}"]  # loopback only
        assert value(hostvars[name]["ansible_host"]) == "127.0.0.1"
        assert value(hostvars[name]["ansible_port"]) == instance["ssh_port"]
        assert hostexec.run_on_host(s, name, ["id", "-un"]).strip() == "root"
        known = sh("ssh-keygen", "-F", instance["id"], "-f", str(hostexec.known_hosts_file(s)))
        assert known.returncode == 0 and instance["id"] in known.stdout
    # Another key is refused: the login is the stack's key, not something of this machine.
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
        server = next(i for i in aws.running_hosts(s) if i["name"] == SERVER)
        options = hostexec.ssh_options(s, server["id"])
        options[options.index("-i") + 1] = str(other)
        refused = sh("ssh", *options, "-p", str(server["ssh_port"]), f"admin@{server['ssh_host']}", "true")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr


def test_configured_hosts_have_prefect_and_the_worker_runs_a_loaded_image(stack):
    assert_host_configured(SERVER, docker=False)
    assert_host_configured(WORKER, docker=True)
    image = ensure_base_image(docker_client())
    # Slim like Debian's container images: no manuals, apt keeps no caches or packages.
    slim = sh("docker", "run", "--rm", image, "sh", "-c",
              "ls /usr/share/man | wc -l; ls /var/cache/apt/*.bin 2>/dev/null | wc -l; "
              "apt-config dump | grep -c 'Keep-Downloaded-Packages \"false\"'")
    assert slim.stdout.split() == ["0", "0", "1"], slim.stdout + slim.stderr
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    load = sh("docker", "exec", "-i", WORKER, "docker", "load", stdin=save.stdout)
    save.wait()
    assert load.returncode == 0, load.stderr
    ran = sh("docker", "exec", WORKER, "docker", "run", "--rm", image, "cat", "/etc/debian_version")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().startswith("12")


def test_the_flow_runner_image_is_in_the_stacks_repository_and_worker_hosts_pull_it_from_there(stack):
    """Configure pushed the image to the data module's ECR repository (the twin's registry
    serves its images under the repository's host name) and the worker host pulled it,
    trusting the stack's CA for that registry alone; a second push of it is skipped."""
    from stack.localcloud import registry

    s = stack["settings"]
    [repo] = aws.client(s, "ecr").describe_repositories(repositoryNames=[repository_name(s)])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    url = repository_url(s)
    reference = stack["first_bootstrap"]["configure"]["flow_runner_image"]
    assert reference.startswith(url + ":"), reference
    assert sh("docker", "exec", WORKER, "docker", "image", "inspect", reference).returncode == 0
    host = registry.registry_host(url)
    assert sh("docker", "exec", WORKER, "test", "-s", f"/etc/docker/certs.d/{host}/ca.crt").returncode == 0
    # Pulled again from nothing, by the name ECR gives it, over the stack's network.
    assert sh("docker", "exec", WORKER, "docker", "rmi", reference).returncode == 0
    try:
        pulled = sh("docker", "exec", WORKER, "docker", "pull", "--quiet", reference)
        assert pulled.returncode == 0, pulled.stderr
        ran = sh("docker", "exec", WORKER, "docker", "run", "--rm", "--network", "none", reference,
                 "python", "-c", "import prefect; print(prefect.__version__)")
        assert ran.stdout.strip() == pinned_prefect(), ran.stderr
    finally:
        if sh("docker", "exec", WORKER, "docker", "image", "inspect", reference).returncode != 0:
            sh("docker", "exec", WORKER, "docker", "pull", "--quiet", reference)  # the smoke tests run flows in it
    # The registry holds the tag: publishing it again pushes nothing.
    endpoint = registry.ensure(s, url)
    assert registry.has_image(s, endpoint, repository_name(s), reference.rsplit(":", 1)[1])
    assert not registry.has_image(s, endpoint, repository_name(s), "0000deadbeef")
    assert publish(s, flow_runner_image(s), url).reference == reference


def test_a_configure_killed_halfway_leaves_no_secret_of_its_environment(stack):
    """ansible-runner records the playbook's environment in its artifacts: the stack gives
    it one without secrets (the AWS SDK asks the operator's process for its keys, see
    stack/credentials.py), so even a configure killed mid-playbook, before any clean-up
    could run, leaves none behind."""
    s = stack["settings"]
    canary = f"canary-{secrets.token_hex(8)}"
    env = clean_env(**TEST_STACK_ENV, AWS_ACCESS_KEY_ID=f"AKIA{canary}", AWS_SECRET_ACCESS_KEY=canary,
                    AWS_SESSION_TOKEN=canary, DATABASE_PASSWORD=canary, PREFECT_API_AUTH_STRING=f"me:{canary}")
    runs = s.state_path / "ansible-runner" / "artifacts"
    before = set(runs.iterdir()) if runs.exists() else set()
    proc = subprocess.Popen([sys.executable, "-m", "flows.configure"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the playbook is past its first tasks
            new = set(runs.iterdir()) - before if runs.exists() else set()
            if new and len(list((new.pop() / "job_events").glob("*.json"))) >= 10:
                break
            time.sleep(0.2)
        else:
            pytest.fail("configure did not get into its playbook within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The killed command's slot on the control plane and its lease in the account are
    # left behind, unrenewed. The next command on this machine sees its process group
    # gone, frees the one and takes over the other at once, rather than waiting until
    # they expire (lock.LEASE_SECONDS, accountlease.LEASE_SECONDS).
    bucket, key = statebackend.state_bucket_name(s), accountlease.lease_key(s)
    left = json.loads(aws.client(s, "s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    assert left["pid"] == proc.pid, left
    assert json.loads((s.state_path / "lock-holder.json").read_text())["pid"] == proc.pid
    asked = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: s.control_plane_api_url}), \
            lock.stack_lock(s):
        waited = time.monotonic() - asked
    assert waited < 10, f"waited {waited:.0f} s for the slot and the lease of a process that is gone"
    leaks = [str(f) for f in s.state_path.rglob("*") if f.is_file() and canary.encode() in f.read_bytes()]
    assert leaks == []
    # Nor in the folder of the credential server it left behind (a config file, a socket).
    leftovers = [f for d in Path(tempfile.gettempdir()).glob("stack-aws-*") for f in d.iterdir() if f.is_file()]
    assert not [str(f) for f in leftovers if canary.encode() in f.read_bytes()]


def _worker_pid(unit: str) -> int:
    return int(sh("docker", "exec", WORKER, "systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip() or 0)


def _wait_new_worker(unit: str, old_pid: int, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        pid = _worker_pid(unit)
        if pid not in (0, old_pid) and sh("docker", "exec", WORKER, "systemctl", "is-active", unit).stdout.strip() == "active":
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"{unit} was not back within {within:.0f} s")


def test_a_worker_that_dies_is_back_within_30_s(stack):
    unit = "prefect-worker-process"
    old = _worker_pid(unit)
    assert old > 0
    assert sh("docker", "exec", WORKER, "kill", "-KILL", str(old)).returncode == 0
    assert _wait_new_worker(unit, old, within=30) < 30


def test_a_worker_that_stops_answering_its_health_check_is_restarted(stack):
    """A frozen worker is alive to systemd; its health check (the worker's own webserver)
    stops answering, and the timer restarts it."""
    unit = "prefect-worker-docker"
    old = _worker_pid(unit)
    # The check leaves a worker alone for its first minute: wait that out first.
    since_us = int(sh("docker", "exec", WORKER, "systemctl", "show", "-p", "ActiveEnterTimestampMonotonic",
                      "--value", unit).stdout.strip())
    up = float(Path("/proc/uptime").read_text().split()[0]) - since_us / 1e6  # containers share the clock
    time.sleep(max(0.0, 61 - up))
    assert sh("docker", "exec", WORKER, "kill", "-STOP", str(old)).returncode == 0
    _wait_new_worker(unit, old, within=150)
    journal = sh("docker", "exec", WORKER, "journalctl", "--no-pager", "-u", "prefect-worker-health").stdout
    assert f"{unit} does not answer its health check: restarting it" in journal
