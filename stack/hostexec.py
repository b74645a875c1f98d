"""Run a command on a stack host and stream bytes through it: ``docker exec`` into the
host container on local, SSH with the stack's key on aws. The same code path (backup,
restore) works on both targets; only the argv prefix differs."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from stack.proc import StackError
from stack.settings import StackSettings


def host_argv(settings: StackSettings, host: str, command: Sequence[str], public_ip: str | None = None) -> list[str]:
    """argv that runs ``command`` as root on ``host`` with stdin and stdout passed through."""
    if settings.target == "local":
        return ["docker", "exec", "-i", host, *command]
    if not public_ip:
        raise StackError(f"host {host} has no public IP; is its instance running? (python -m flows.status)")
    from stack.terraform import ssh_key_file, ssh_public_key

    ssh_public_key(settings)  # the SSH key's cache file, from the account when it is missing
    ssh_dir = ssh_key_file(settings).parent
    return ["ssh", "-i", str(ssh_key_file(settings)), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={ssh_dir / 'known_hosts'}",
            f"{settings.ssh_user}@{public_ip}", "sudo " + shlex.join(command)]


def run_on_host(settings: StackSettings, host: str, command: Sequence[str], public_ip: str | None = None,
                stdin: bytes | None = None, timeout: float = 600) -> str:
    """Run ``command`` on ``host``; its stdout, or a StackError naming host and command."""
    argv = host_argv(settings, host, command, public_ip)
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise StackError(f"`{shlex.join(command)}` failed on {host} (exit {done.returncode}): "
                         f"{err[-1] if err else 'no output'}")
    return done.stdout.decode(errors="replace")


def open_on_host(settings: StackSettings, host: str, command: Sequence[str], public_ip: str | None = None,
                 write: bool = False) -> subprocess.Popen:
    """Start ``command`` on ``host`` with a pipe to read its stdout (or, ``write``, to feed its stdin)."""
    argv = host_argv(settings, host, command, public_ip)
    if write:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
