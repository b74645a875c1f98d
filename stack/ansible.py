"""The one Ansible runner: playbooks from ``ansible/`` through ansible-runner, over the
``aws_ec2`` dynamic inventory, each task's per-host result streamed into the logger."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner

from stack.proc import StackError, get_logger, redact
from stack.settings import REPO_ROOT, StackSettings

ANSIBLE_DIR = REPO_ROOT / "ansible"
INVENTORY = ANSIBLE_DIR / "inventory.aws_ec2.yml"
# Packages of the hosts' Prefect virtualenv, at the versions of constraints.txt.
HOST_PREFECT_PACKAGES = ("prefect", "prefect-aws", "prefect-docker", "s3fs", "docker")


class AnsibleError(StackError):
    """A playbook failed on a host; names the host, the task and the message."""


@dataclass
class HostRecap:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


@dataclass
class PlaybookResult:
    playbook: str
    status: str
    recap: dict[str, HostRecap] = field(default_factory=dict)
    first_failure: tuple[str, str, str] | None = None  # host, task, message
    unreachable_hosts: list[str] = field(default_factory=list)


def pinned_versions(names=HOST_PREFECT_PACKAGES) -> list[str]:
    """``name==version`` for each name, read from constraints.txt."""
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    missing = [n for n in names if n not in pins]
    if missing:
        raise StackError(f"constraints.txt pins no version of {', '.join(missing)}; regenerate it")
    return [f"{n}=={pins[n]}" for n in names]


def environment(settings: StackSettings) -> dict[str, str]:
    """What the inventory and group_vars read: target, region, prefix, endpoint, key."""
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "STACK_TARGET": settings.target,
        "STACK_REGION": settings.region,
        "STACK_NAME_PREFIX": settings.name_prefix,
        "STACK_SSH_USER": settings.ssh_user,
        "STACK_SSH_KEY_FILE": str(settings.state_path / "ssh" / "id_ed25519"),
        "STACK_PLATFORM_AUTH_FILE": str(settings.state_path / "platform-auth"),
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        **settings.aws_env(),
    }
    if settings.emulator_endpoint:
        env["AWS_URL"] = settings.emulator_endpoint  # the aws_ec2 inventory's endpoint
    return env


SENSITIVE_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|AUTH_STRING|ACCESS_KEY|API_KEY)", re.I)


def _scrub_command_artifact(artifact_dir: Path) -> None:
    """ansible-runner records the whole environment in artifacts/<id>/command: mask the
    values of every sensitive variable (AWS keys, tokens, passwords)."""
    command_file = artifact_dir / "command"
    if not command_file.exists():
        return
    data = json.loads(command_file.read_text())
    env = data.get("env") or {}
    data["env"] = {k: ("****" if SENSITIVE_ENV.search(k) and v else v) for k, v in env.items()}
    command_file.write_text(json.dumps(data))


def install_vars() -> dict:
    """Variables of the roles' install tasks (``tasks/install.yml``): what the hosts'
    Prefect virtualenv holds. Configure passes them, and the image bake hashes them."""
    return {
        "base_system_prefect_packages": pinned_versions() + ["fastapi<0.151", "sqlalchemy<2.1"],
        "base_system_constraints_file": str(REPO_ROOT / "constraints.txt"),
    }


def run_playbook(
    settings: StackSettings,
    playbook: str,
    extravars: dict | None = None,
    limit: str | None = None,
    secrets: tuple[str, ...] = (),
    inventory: Path | None = None,
    env: dict[str, str] | None = None,
) -> PlaybookResult:
    """Run one playbook of ``ansible/``; log each task result per host. ``inventory``
    replaces the stack's dynamic inventory (the image bake uses a one-host file, with
    ``env`` enabling the yaml inventory plugin)."""
    log = get_logger()
    result = PlaybookResult(playbook=playbook, status="")
    private_dir = settings.state_path / "ansible-runner"
    private_dir.mkdir(parents=True, exist_ok=True)

    def on_event(event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host, task = data.get("host", ""), data.get("task", "")
        res = data.get("res") or {}
        if kind == "runner_on_ok":
            log.info("%s | %s | %s", host, "changed" if res.get("changed") else "ok", task)
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            if data.get("ignore_errors"):
                return True
            msg = redact(str(res.get("msg") or res.get("stderr") or res.get("module_stderr") or res)[:2000], secrets)
            state = "UNREACHABLE" if kind == "runner_on_unreachable" else "FAILED"
            log.error("%s | %s | %s: %s", host, state, task, msg)
            if kind == "runner_on_unreachable":
                result.unreachable_hosts.append(host)
            if result.first_failure is None:
                result.first_failure = (host, task, msg)
        elif kind == "runner_on_skipped":
            log.debug("%s | skipped | %s", host, task)
        elif kind == "playbook_on_play_start":
            log.info("PLAY %s", data.get("play", ""))
        return True  # keep the event in the artifacts

    r = ansible_runner.run(
        private_data_dir=str(private_dir),
        project_dir=str(ANSIBLE_DIR),
        playbook=playbook,
        inventory=str(inventory or INVENTORY),
        envvars={**environment(settings), **(env or {})},
        extravars=extravars or {},
        limit=limit,
        quiet=True,
        event_handler=on_event,
        rotate_artifacts=5,
        suppress_env_files=True,  # keep the environment (AWS keys) out of the artifacts
    )
    _scrub_command_artifact(Path(r.config.artifact_dir))
    result.status = r.status
    stats = r.stats or {}
    hosts = set()
    for key in ("ok", "changed", "failures", "dark", "skipped", "processed"):
        hosts |= set((stats.get(key) or {}).keys())
    for h in sorted(hosts):
        result.recap[h] = HostRecap(
            ok=stats.get("ok", {}).get(h, 0), changed=stats.get("changed", {}).get(h, 0),
            failed=stats.get("failures", {}).get(h, 0), unreachable=stats.get("dark", {}).get(h, 0),
            skipped=stats.get("skipped", {}).get(h, 0),
        )
    if r.status != "successful" and result.first_failure is None and not result.unreachable_hosts:
        tail = redact(r.stdout.read()[-1500:], secrets) if r.stdout else ""
        result.first_failure = ("-", playbook, f"ansible-playbook ended {r.status} (rc {r.rc}): {tail}")
    return result
