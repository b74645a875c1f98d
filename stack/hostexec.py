"""Run a command on a stack host and stream bytes through it, over SSH with the stack's
key as the AMI's default user, then sudo: the way Ansible reaches the hosts, on both
targets (backups and restores use it). The address comes from EC2: the public IP on
aws, the loopback port the hosts step tagged on the emulated cloud (stack/aws.py)."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from stack.proc import StackError
from stack.settings import StackSettings


def known_hosts_file(settings: StackSettings) -> Path:
    """The stack's own known_hosts (Ansible's too): host keys filed under instance ids."""
    from stack.terraform import ssh_key_file

    return ssh_key_file(settings).parent / "known_hosts"


def ssh_options(settings: StackSettings, instance_id: str) -> list[str]:
    """What ssh needs to reach an instance of the stack, and nothing of the operator's:
    only the stack's key is offered, its host key is filed under the instance id (a
    recycled public IP or loopback port is then a new entry, never a changed one), and
    no prompt ever waits."""
    from stack.terraform import ssh_key_file, ssh_public_key

    ssh_public_key(settings)  # the SSH key's cache file, from the account when it is missing
    return ["-i", str(ssh_key_file(settings)), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known_hosts_file(settings)}",
            "-o", f"HostKeyAlias={instance_id}", "-o", "ConnectTimeout=10"]


def host_argv(settings: StackSettings, host: str, command: Sequence[str], instance: dict | None = None) -> list[str]:
    """argv that runs ``command`` as root on ``host`` (its Name tag) with stdin and stdout
    passed through. ``instance`` (aws.running_hosts' dict of that host) spares the lookup."""
    from stack import aws

    if instance is None:
        instance = next((i for i in aws.running_hosts(settings) if i["name"] == host), None)
    if instance is None or not instance.get("ssh_host"):
        raise StackError(f"host {host} is not running or has no address to reach it at; "
                         "python -m flows.status shows the hosts")
    return ["ssh", *ssh_options(settings, instance["id"]), "-p", str(instance["ssh_port"]),
            f"{settings.ssh_user}@{instance['ssh_host']}", "sudo " + shlex.join(command)]


def run_on_host(settings: StackSettings, host: str, command: Sequence[str],
                stdin: bytes | None = None, timeout: float = 600, instance: dict | None = None) -> str:
    """Run ``command`` on ``host``; its stdout, or a StackError naming host and command."""
    argv = host_argv(settings, host, command, instance)
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise StackError(f"`{shlex.join(command)}` failed on {host} (exit {done.returncode}): "
                         f"{err[-1] if err else 'no output'}")
    return done.stdout.decode(errors="replace")


def open_on_host(settings: StackSettings, host: str, command: Sequence[str], write: bool = False) -> subprocess.Popen:
    """Start ``command`` on ``host`` with a pipe to read its stdout (or, ``write``, to feed its stdin)."""
    argv = host_argv(settings, host, command)
    if write:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
