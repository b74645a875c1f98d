"""Checks of what a user gives the stack, run by every command before it creates or
changes anything: the files a user edits (playbooks, prefect.yaml, Terraform files) and
the machine (state directory, auth file, Docker engine, Terraform, ports). Each problem
is one line naming the file or setting and what to do; ``stack.cli`` prints it and
exits 2. Settings themselves are checked when they load (``stack/settings.py``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from stack.settings import REPO_ROOT, StackSettings


class InputError(Exception):
    """One line: what is wrong and what to do."""


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# -- the machine ---------------------------------------------------------------------------

def state_dir(settings: StackSettings) -> None:
    path = settings.state_path
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"state directory {path} cannot be made: {probe} is not a folder; "
                         "set STACK_STATE_DIR to a folder you can write")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"state directory {path} is not writable ({probe}); "
                         "fix its permissions or set STACK_STATE_DIR to a folder you can write")
    from stack.statebackend import IDENTITY_FILE, identity

    claimed = path / IDENTITY_FILE
    if claimed.exists():
        try:
            owner = json.loads(claimed.read_text())
        except ValueError:
            owner = {}
        if owner and owner != identity(settings):
            def say(i: dict) -> str:
                return f"{i.get('target')} stack {i.get('name_prefix')} in {i.get('region')}"
            raise InputError(f"state directory {path} holds the caches of the {say(owner)}, not of the "
                             f"{say(identity(settings))}; set STACK_STATE_DIR to another folder for this stack "
                             "(or delete that one: its stack's state and secrets are in its account)")


AUTH_RE = re.compile(r"^[^:\s]+:\S{16,}$")


def auth_file(settings: StackSettings) -> None:
    from stack import platform

    path = platform.auth_file(settings)
    if path.exists() and not AUTH_RE.match(path.read_text(errors="replace").strip()):
        raise InputError(f"{path} is damaged (it must hold user:password); delete it: it is a cache, and the "
                         "next command reads the auth string back from Secrets Manager")


def docker_engine(settings: StackSettings) -> None:
    if settings.target != "local":
        return
    import docker

    try:
        docker.from_env(timeout=5).ping()
    except Exception:  # noqa: BLE001  (docker raises many kinds; all mean "no engine")
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise InputError(f"no Docker engine answers at {where}; run bin/setup (it starts one) "
                         "or start dockerd, then run again") from None


TERRAFORM_MINIMUM = (1, 10)  # the S3 backend's own lock file (use_lockfile)


def terraform_binary(settings: StackSettings) -> None:
    want = ".".join(map(str, TERRAFORM_MINIMUM))
    if not shutil.which("terraform"):
        raise InputError(f"terraform is not on PATH; install Terraform {want} or newer and put it on PATH")
    done = subprocess.run(["terraform", "version", "-json"], capture_output=True, text=True, timeout=60)
    try:
        version = json.loads(done.stdout)["terraform_version"]
        found = tuple(int(x) for x in version.split("-")[0].split(".")[:2])
    except (ValueError, KeyError):
        return  # an unusual build: terraform init will say what it lacks
    if found < TERRAFORM_MINIMUM:
        raise InputError(f"terraform {version} is too old: the stack's state lock needs Terraform {want} or "
                         "newer (use_lockfile of the S3 backend); install a newer one")


def ansible_binary(settings: StackSettings) -> None:
    """ansible-playbook, from this interpreter's environment (bin/setup installs it into
    .venv, which need not be on PATH) or from PATH."""
    if not ((Path(sys.executable).parent / "ansible-playbook").exists() or shutil.which("ansible-playbook")):
        raise InputError("ansible-playbook is not installed; run bin/setup to install the pinned Python packages")


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


def _published_by_us(settings: StackSettings, port: int) -> bool:
    """Whether one of this stack's containers publishes ``port`` (then it is ours)."""
    out = subprocess.run(["docker", "ps", "--filter", f"label=stack.project={settings.name_prefix}",
                          "--format", "{{.Ports}}"], capture_output=True, text=True).stdout
    return f"127.0.0.1:{port}->" in out


def ports(settings: StackSettings) -> None:
    from stack import controlplane

    if _port_taken(settings.control_plane_port) and not controlplane.healthy(settings):
        raise InputError(f"port {settings.control_plane_port} (STACK_CONTROL_PLANE_PORT) is taken by another "
                         "program; stop it or set STACK_CONTROL_PLANE_PORT to a free port")
    if settings.target != "local":
        return
    local_ports = [(settings.platform_port, "STACK_PLATFORM_PORT"), (settings.emulator_port, "STACK_EMULATOR_PORT")]
    if settings.multi_server:
        local_ports.append((settings.load_balancer_port, "STACK_LOAD_BALANCER_PORT"))
    for port, setting in local_ports:
        if _port_taken(port) and not _published_by_us(settings, port):
            raise InputError(f"port {port} ({setting}) is taken by another program; stop it or set "
                             f"{setting} to a free port")


# -- the files a user edits ----------------------------------------------------------------

class _AnsibleLoader(yaml.SafeLoader):
    """Safe YAML that accepts Ansible's tags (!unsafe, !vault) without acting on them."""


_AnsibleLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> InputError:
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return InputError(f"{_rel(path)}{where}: {problem}; fix the YAML and run again")


def playbooks(settings: StackSettings) -> None:
    for path in sorted((REPO_ROOT / "ansible").rglob("*.yml")):
        try:
            yaml.load(path.read_text(), Loader=_AnsibleLoader)  # noqa: S506  (a safe loader)
        except yaml.YAMLError as exc:
            raise _yaml_error(path, exc) from None


def _defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def deployments(settings: StackSettings) -> None:
    path = REPO_ROOT / "deployments" / "prefect.yaml"
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    for dep in doc.get("deployments") or []:
        entry = str(dep.get("entrypoint", ""))
        file, _, func = entry.partition(":")
        source = REPO_ROOT / "flows" / file
        if not func or not source.is_file() or not _defines(source, func):
            raise InputError(f"{_rel(path)}: deployment {dep.get('name', '?')} names entrypoint {entry!r}, which "
                             f"{_rel(source)} does not define; point it at a flow function in flows/")


def terraform_files(settings: StackSettings) -> None:
    if not shutil.which("terraform"):
        return  # terraform_binary says so
    for root in sorted(p for p in (REPO_ROOT / "terraform").iterdir() if p.is_dir()):
        done = subprocess.run(["terraform", "fmt", "-check", "-list=false", "-no-color", "-recursive", str(root)],
                              capture_output=True, text=True)
        if done.returncode in (0, 3):  # 3: parses, but would be reformatted
            continue
        text = done.stderr
        summary = next((ln.removeprefix("Error: ").strip() for ln in text.splitlines() if ln.startswith("Error: ")),
                       text.strip().splitlines()[0] if text.strip() else "does not parse")
        where = re.search(r"on (\S+) line (\d+)", text)
        file = _rel(root)
        if where:
            named = Path(where.group(1))
            found = next((c for c in (named, REPO_ROOT / named, root / named) if c.is_file()), root / named)
            file = f"{_rel(found)} line {where.group(2)}"
        raise InputError(f"{file}: {summary}; fix the Terraform syntax and run again")


# Which checks each command runs: all read the machine; the files only where used.
MACHINE = (state_dir, auth_file, docker_engine, ports)
CHECKS: dict[str, tuple[Callable[[StackSettings], None], ...]] = {
    "bootstrap": MACHINE + (terraform_binary, ansible_binary, terraform_files, playbooks, deployments),
    "preflight": MACHINE + (terraform_binary, ansible_binary, terraform_files, playbooks, deployments),
    "provision": MACHINE + (terraform_binary, terraform_files),
    "hosts": MACHINE,
    "configure": MACHINE + (ansible_binary, playbooks),
    "register": MACHINE,
    "deploy": MACHINE + (deployments,),
    "smoke": MACHINE + (deployments,),
    "restore": MACHINE,
    "backup": MACHINE,
    "teardown": (state_dir, auth_file, docker_engine, terraform_binary),
}


def run_checks(settings: StackSettings, command: str) -> None:
    """Raise InputError on the first problem the command would meet."""
    for check in CHECKS.get(command, ()):
        check(settings)
