"""The one Ansible runner: playbooks from ``ansible/`` through ansible-runner, over the
``aws_ec2`` dynamic inventory, each task's per-host result streamed into the logger."""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ansible_runner import Runner, RunnerConfig

from stack import credentials, tls
from stack.hostexec import known_hosts_file
from stack.pins import PLATFORM_CAPS, PLATFORM_PACKAGES, pinned_versions, platform_constraints
from stack.proc import StackError, get_logger, redact
from stack.settings import REPO_ROOT, StackSettings
from stack.terraform import ssh_key_file, ssh_public_key

ANSIBLE_DIR = REPO_ROOT / "ansible"
INVENTORY = ANSIBLE_DIR / "inventory.aws_ec2.yml"


class AnsibleError(StackError):
    """A playbook failed on a host; names the host, the task and the message."""


# How often a playbook that could not reach a host runs again (a Prefect task's retries).
UNREACHABLE_RETRIES = 3
UNREACHABLE_DELAY_SECONDS = 5


class HostsUnreachable(AnsibleError):
    """The playbook could not reach some hosts (or lost its connection to them) and no
    task failed: worth running again, which the tasks that run playbooks do (their retries)."""


def retry_if_unreachable(task, task_run, state) -> bool:
    """Prefect's retry condition of the tasks that run playbooks: retry a lost connection, never a
    task that failed (that needs a fix)."""
    try:
        state.result()
    except HostsUnreachable:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False


@dataclass
class HostRecap:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


# A task that failed because the channel to its host lost the command's output, not
# because of what the task does: the Docker API's exec (the image bake's connection)
# sometimes returns an empty output under load (community.docker issue 644), and Ansible
# then cannot find its temporary directory on the host, or docker_api the ids of its
# user (the stack's connection plugin retries that exec,
# ansible/connection_plugins/stack_docker_api.py).
CONNECTION_LOST = re.compile(r"failed to resolve remote temporary directory"
                             r"|Error while determining user and group ID of current user")


@dataclass
class PlaybookResult:
    playbook: str
    status: str
    recap: dict[str, HostRecap] = field(default_factory=dict)
    first_failure: tuple[str, str, str] | None = None  # host, task, message
    unreachable_hosts: list[str] = field(default_factory=list)

    def hosts_to_retry(self) -> list[str]:
        """Hosts worth running the playbook on again: the unreachable ones when no task
        failed; every host that did not finish when the first failure was a lost
        connection (with the free strategy, a worker host then fails waiting for a
        server host that stopped). Empty when a task itself failed: that needs a fix."""
        failed = {h for h, r in self.recap.items() if r.failed}
        lost = {h for h, r in self.recap.items() if r.unreachable} | set(self.unreachable_hosts)
        if self.first_failure is not None and CONNECTION_LOST.search(self.first_failure[2]):
            return sorted(failed | lost)
        return sorted(lost) if not failed else []


@dataclass
class WaitsOnFailedHost:
    """Whether a run's remaining hosts only wait on a host that failed: a worker host
    waits for the server's API (up to two minutes), which a failed server host will not
    give it. Fed with the run's events; ``pointless()`` is true once an awaited host
    failed (a task failed: an unreachable host may come back, and is retried) and every
    other host seen is inside one of the waiting tasks. A host between tasks, or in any
    other task, holds the stop off: no install is cut short."""

    awaited_hosts: frozenset[str]
    waiting_tasks: frozenset[str]
    in_task: dict[str, str | None] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def saw(self, kind: str, host: str, task: str, ignored: bool = False) -> None:
        if not host:
            return
        if kind == "runner_on_start":
            self.in_task[host] = task
        elif kind in ("runner_on_ok", "runner_on_skipped", "runner_on_failed", "runner_on_unreachable"):
            self.in_task[host] = None
            if kind == "runner_on_failed" and not ignored:
                self.failed.add(host)

    def pointless(self) -> bool:
        if not self.failed & self.awaited_hosts:
            return False
        others = [t for h, t in self.in_task.items() if h not in self.failed and h not in self.awaited_hosts]
        return bool(others) and all(t in self.waiting_tasks for t in others)


def kill_playbook_processes() -> list[int]:
    """SIGKILL every ansible-playbook process this process started, with its workers.
    ansible-runner's cancel kills the playbook's process group only, and Ansible runs each
    task in a worker process of its own session (ansible-core detaches them): a stopped
    run's workers would go on with their tasks, then wait for ever on a parent that is
    gone. Found through /proc (Linux; elsewhere nothing is killed). The pids killed."""
    proc = Path("/proc")
    parents: dict[int, int] = {}
    for entry in proc.glob("[0-9]*"):
        try:
            # The parent pid is the 2nd field after the command, which may hold spaces.
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if b"ansible-playbook" in (proc / str(pid) / "cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return found


def failure_message(res: dict) -> str:
    """What a failed task said: its message, and for a command what it wrote (a shell
    task's ``msg`` is only "non-zero return code")."""
    msg = str(res.get("msg") or res.get("stderr") or res.get("module_stderr") or res)
    # One line (bootstrap reports a failure's first line): the output's lines joined.
    output = " | ".join(line.strip() for line in (res.get("stderr") or res.get("stdout") or "").splitlines()
                        if line.strip())
    if res.get("rc") and output and output not in msg:
        msg = output if msg == "non-zero return code" else f"{msg}: {output}"
    return msg


SENSITIVE_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|AUTH_STRING|ACCESS_KEY|API_KEY|CREDENTIAL)", re.I)


def environment(settings: StackSettings) -> dict[str, str]:
    """The whole environment of ansible-playbook: what the inventory and group_vars read
    (target, region, prefix, endpoint, key and auth file paths) and the operator's
    environment without any secret. AWS credentials come from stack/credentials.py."""
    # The operator's AWS settings pass (a CA bundle, endpoints), never a key: those come
    # from stack/credentials.py while the playbook runs.
    env = {k: v for k, v in os.environ.items() if not SENSITIVE_ENV.search(k)}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "STACK_TARGET": settings.target,
        "STACK_REGION": settings.region,
        "STACK_NAME_PREFIX": settings.name_prefix,
        # What python -m stack.localcloud.loadbalancer (the rolling restart, local) reads.
        "STACK_EMULATOR_PORT": str(settings.emulator_port),
        "STACK_LOAD_BALANCER_PORT": str(settings.load_balancer_port),
        "STACK_STATE_DIR": str(settings.state_path),
        "STACK_SSH_USER": settings.ssh_user,
        "STACK_SSH_KEY_FILE": str(ssh_key_file(settings)),
        "STACK_SSH_KNOWN_HOSTS": str(known_hosts_file(settings)),
        "STACK_PLATFORM_AUTH_FILE": str(settings.state_path / "platform-auth"),
        "STACK_DATABASE_PASSWORD_FILE": str(settings.state_path / "database-password"),
        "STACK_REDIS_AUTH_FILE": str(settings.state_path / "redis-auth-token"),
        # The CA and server certificate (stack/tls.py); the roles copy from this folder.
        "STACK_TLS_DIR": str(tls.tls_dir(settings)),
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "AWS_DEFAULT_REGION": settings.region,
        "AWS_REGION": settings.region,
    }
    if settings.emulator_endpoint:
        env["AWS_URL"] = settings.emulator_endpoint  # the aws_ec2 inventory's endpoint
        env["AWS_ENDPOINT_URL"] = settings.emulator_endpoint
    return env


def install_vars(settings: StackSettings) -> dict:
    """Variables of the roles' install tasks (``tasks/install.yml``): what the hosts'
    Prefect virtualenv holds, on the platform's Prefect (STACK_PREFECT_VERSION). Configure
    passes them, and the image bake hashes them."""
    constraints = platform_constraints(settings.prefect_version)
    return {
        "base_system_prefect_packages": pinned_versions(PLATFORM_PACKAGES, constraints) + list(PLATFORM_CAPS),
        "base_system_constraints_file": str(constraints),
        "base_system_uv_package": pinned_versions(("uv",))[0],
    }


def run_playbook(
    settings: StackSettings,
    playbook: str,
    extravars: dict | None = None,
    limit: str | None = None,
    secrets: tuple[str, ...] = (),
    inventory: Path | None = None,
    env: dict[str, str] | None = None,
    waits: WaitsOnFailedHost | None = None,
) -> PlaybookResult:
    """Run one playbook of ``ansible/``; log each task result per host. ``inventory``
    replaces the stack's dynamic inventory (the image bake uses a one-host file, with
    ``env`` enabling the yaml inventory plugin). ``waits``: stop the run (status
    "canceled", the awaited host's failure first) once the other hosts only wait on it."""
    log = get_logger()
    result = PlaybookResult(playbook=playbook, status="")
    private_dir = settings.state_path / "ansible-runner"
    private_dir.mkdir(parents=True, exist_ok=True)

    def on_event(event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host, task = data.get("host", ""), data.get("task", "")
        res = data.get("res") or {}
        if waits is not None:
            waits.saw(kind, host, task, bool(data.get("ignore_errors")))
        if kind == "runner_on_ok":
            log.info("%s | %s | %s", host, "changed" if res.get("changed") else "ok", task)
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            if data.get("ignore_errors"):
                return True
            msg = redact(failure_message(res)[:2000], secrets)
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

    config = RunnerConfig(
        private_data_dir=str(private_dir),
        project_dir=str(ANSIBLE_DIR),
        playbook=playbook,
        inventory=str(inventory or INVENTORY),
        extravars=extravars or {},
        limit=limit,
        quiet=True,
        rotate_artifacts=5,
        suppress_env_files=True,  # no env/ files
    )
    config.prepare()
    # ansible-runner seeds the playbook's environment with the whole of ours and writes
    # it to artifacts/<id>/command: give it one that holds no secret instead.
    added_by_runner = {k: v for k, v in config.env.items() if os.environ.get(k) != v}  # its callback, PYTHONPATH
    if inventory is None:  # the stack's hosts, over SSH (the bake's build container is not)
        ssh_public_key(settings)  # the SSH key's cache file, from the account when it is missing
    with credentials.served(settings) as aws_env:
        config.env = {**environment(settings), **aws_env, **added_by_runner, **(env or {})}
        def cancel() -> bool:
            if waits is None or not waits.pointless():
                return False
            waiting = sorted(h for h, t in waits.in_task.items() if t is not None)
            log.warning("stopping the playbook: %s only wait on %s, which failed",
                        ", ".join(waiting), ", ".join(sorted(waits.failed & waits.awaited_hosts)))
            kill_playbook_processes()  # its task workers too, which ansible-runner's stop leaves
            return True

        r = Runner(config=config, event_handler=on_event, cancel_callback=cancel)
        r.run()
    result.status = r.status
    stats = r.stats or {}
    if not stats and waits is not None and r.status == "canceled":  # no recap after a stop
        stats = {"failures": {h: 1 for h in waits.failed}, "ok": {h: 0 for h in waits.in_task}}
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
