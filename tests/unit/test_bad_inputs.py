"""Every bad input gets one line, before anything is created: settings, command-line
options, the files a user edits, and the machine. Each case runs the real command
(``python -m flows.bootstrap`` unless it says otherwise) against a state directory that
does not exist and a name prefix no stack uses, and checks that it exits 2 with one line
naming what is wrong and what to do, that the state directory is still absent (or, for
the damaged auth file, unchanged), and that no container of that prefix exists."""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import EARLY_STOP, REPO, clean_env, early_result

PREFIX = "p2bad"


@dataclass
class Case:
    id: str
    expect: str                                   # a fragment of the one line
    argv: tuple[str, ...] = ("flows.bootstrap",)
    env: dict[str, str] = field(default_factory=dict)
    edit: tuple[str, str, str] | None = None      # (file in a repo copy, old text, new text)
    toml: str | None = None                       # a stack.toml with this content
    bind: str | None = None                       # the env setting whose port another program holds
    auth: str | None = None                       # an existing platform-auth file with this content
    claimed: str | None = None                    # an existing stack.json (which stack the state dir caches)


TERRAFORM_DIR = str(Path(shutil.which("terraform") or "/usr/local/bin/terraform").parent)
PATH_WITHOUT_TERRAFORM = ":".join(p for p in [str(Path(sys.executable).parent), "/usr/bin", "/bin"]
                                  if p != TERRAFORM_DIR)

CASES = [
    # settings
    Case("worker-count-zero", "STACK_WORKER_COUNT", env={"STACK_WORKER_COUNT": "0"}),
    Case("server-count-zero", "STACK_SERVER_COUNT", env={"STACK_SERVER_COUNT": "0"}),
    Case("server-count-six", "STACK_SERVER_COUNT", env={"STACK_SERVER_COUNT": "6"}),
    Case("unknown-target", "STACK_TARGET", env={"STACK_TARGET": "gcp"}),
    Case("bad-prefix", "STACK_NAME_PREFIX", env={"STACK_NAME_PREFIX": "Bad_Prefix!"}),
    Case("bad-cron", "STACK_NIGHTLY_TEARDOWN_CRON", env={"STACK_NIGHTLY_TEARDOWN_CRON": "every night"}),
    Case("bad-timezone", "STACK_SCHEDULE_TIMEZONE", env={"STACK_SCHEDULE_TIMEZONE": "Mars/Olympus"}),
    Case("worker-concurrency-zero", "STACK_WORKER_CONCURRENCY", env={"STACK_WORKER_CONCURRENCY": "0"}),
    Case("aws-without-cidr", "STACK_OPERATOR_CIDR", env={"STACK_TARGET": "aws", "STACK_AMI_ID": "ami-0123456789abcdef0"}),
    # command-line options
    Case("unknown-option", "unrecognized arguments: --dry-run", argv=("flows.bootstrap", "--dry-run")),
    Case("unknown-step", "--only 'provisoin': no such step; use one of preflight, bake, provision, hosts, configure, "
         "restore, register, deploy, smoke; see --help", argv=("flows.bootstrap", "--only", "provisoin")),
    Case("from-and-only", "--from and --only do not go together", argv=("flows.bootstrap", "--from", "hosts", "--only", "smoke")),
    Case("teardown-unknown-option", "unrecognized arguments: --everything", argv=("flows.teardown", "--everything")),
    Case("restore-missing-value", "--backup: expected one argument", argv=("flows.restore", "--backup")),
    # the files a user edits
    Case("playbook-yaml-error", "ansible/roles/base_system/tasks/main.yml line",
         edit=("ansible/roles/base_system/tasks/main.yml", "    state: link\n", "    state: link\n  - broken: [\n")),
    Case("missing-entrypoint", "names entrypoint 'testflow.py:no_such_flow'",
         edit=("deployments/prefect.yaml", "testflow.py:concurrent_flows", "testflow.py:no_such_flow")),
    Case("prefect-yaml-error", "deployments/prefect.yaml line", edit=("deployments/prefect.yaml", "deployments:", "deployments: [")),
    Case("terraform-syntax-error", "terraform/compute/ec2.tf line",
         edit=("terraform/compute/ec2.tf", "resource ", "resource {{ ")),
    Case("stack-toml-syntax", "fix the TOML", toml="worker_count = \n"),
    Case("stack-toml-unknown-key", "unknown setting 'worker_cont'", toml="worker_cont = 2\n"),
    # the machine
    Case("docker-stopped", "no Docker engine answers", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}),
    Case("terraform-not-on-path", "terraform is not on PATH", env={"PATH": PATH_WITHOUT_TERRAFORM}),
    Case("control-plane-port-taken", "STACK_CONTROL_PLANE_PORT", env={"STACK_CONTROL_PLANE_PORT": "4711"},
         bind="STACK_CONTROL_PLANE_PORT"),
    Case("platform-port-taken", "STACK_PLATFORM_PORT", env={"STACK_PLATFORM_PORT": "4712"}, bind="STACK_PLATFORM_PORT"),
    Case("emulator-port-taken", "STACK_EMULATOR_PORT", env={"STACK_EMULATOR_PORT": "4713"}, bind="STACK_EMULATOR_PORT"),
    Case("unwritable-state-dir", "set STACK_STATE_DIR", env={"STACK_STATE_DIR": "/dev/null/stack-state"}),
    Case("truncated-auth-file", "platform-auth is damaged", auth="admin:"),
    Case("state-dir-of-another-stack", "holds the caches of the aws stack",
         claimed='{"target": "aws", "region": "eu-west-1", "name_prefix": "badinput"}'),
    Case("backup-cron-systemd-cannot-express", "STACK_BACKUP_CRON", env={"STACK_BACKUP_CRON": "0 2 1 * 1"}),
]


def run_case(case: Case, tmp: Path, base_env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    if EARLY_STOP.is_set():
        raise RuntimeError("the test session ended before this case began")
    cwd = REPO
    if case.edit:
        cwd = tmp / "repo"
        shutil.copytree(REPO, cwd, ignore=shutil.ignore_patterns(".venv", ".stack*", ".git", "__pycache__"))
        target = cwd / case.edit[0]
        text = target.read_text()
        assert case.edit[1] in text, f"{case.id}: the edit no longer applies to {case.edit[0]}"
        target.write_text(text.replace(case.edit[1], case.edit[2], 1))
    state = tmp / "state"
    env = {"STACK_NAME_PREFIX": PREFIX, "STACK_STATE_DIR": str(state), "STACK_CONTROL_PLANE_PORT": "4700",
           "STACK_PLATFORM_PORT": "4701", "STACK_EMULATOR_PORT": "4702", "STACK_CONFIG_FILE": "/nonexistent/stack.toml"}
    if case.toml is not None:
        (tmp / "stack.toml").write_text(case.toml)
        env["STACK_CONFIG_FILE"] = str(tmp / "stack.toml")
    if case.auth is not None:
        state.mkdir()
        (state / "platform-auth").write_text(case.auth)
    if case.claimed is not None:
        state.mkdir(exist_ok=True)
        (state / "stack.json").write_text(case.claimed)
    env |= case.env
    held = None
    if case.bind:
        held = socket.socket()
        # A connection of an earlier run may still be in TIME_WAIT on this port.
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", int(env[case.bind])))
        held.listen()
    try:
        proc = subprocess.run([sys.executable, "-m", *case.argv], cwd=cwd, env=clean_env(base_env, **env),
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        if held:
            held.close()
    return proc, Path(env["STACK_STATE_DIR"])


EARLY_FIXTURE = "outcomes"


def start_early(env: dict[str, str]) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case, four at a time, each in a folder of its own (removed at exit)."""
    base = Path(tempfile.mkdtemp(prefix="p2bad-cases-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    folders = {c.id: base / c.id for c in CASES}
    for folder in folders.values():
        folder.mkdir()
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = pool.map(lambda c: run_case(c, folders[c.id], env), CASES)
        return {c.id: d for c, d in zip(CASES, done)}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    return early_result(__name__, start_early)


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_before_anything_is_created(case, outcomes):
    proc, state = outcomes[case.id]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and case.expect in lines[0], lines[0]
    assert proc.stdout == ""
    if case.auth is not None:  # what existed is untouched, and nothing was added
        assert sorted(p.name for p in state.iterdir()) == ["platform-auth"]
        assert (state / "platform-auth").read_text() == case.auth
    elif case.claimed is not None:
        assert sorted(p.name for p in state.iterdir()) == ["stack.json"]
        assert (state / "stack.json").read_text() == case.claimed
    else:
        assert not state.exists()
    names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    assert not [n for n in names.split() if n.startswith(PREFIX)]


def test_a_terraform_too_old_for_the_state_lock_is_refused_naming_the_version(tmp_path, monkeypatch):
    from stack.checks import InputError, terraform_binary
    from stack.settings import StackSettings

    fake = tmp_path / "terraform"
    fake.write_text('#!/bin/sh\necho \'{"terraform_version": "1.9.8", "platform": "linux_amd64"}\'\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(InputError, match=r"terraform 1\.9\.8 is too old.*1\.10"):
        terraform_binary(StackSettings(state_dir=tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InputError, match="not on PATH"):
        terraform_binary(StackSettings(state_dir=tmp_path))


def test_ansible_playbook_missing_from_the_environment_and_path_names_bin_setup(tmp_path, monkeypatch):
    from stack.checks import InputError, ansible_binary
    from stack.settings import StackSettings

    settings = StackSettings(state_dir=tmp_path)
    ansible_binary(settings)  # bin/setup put it beside this interpreter
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InputError, match="ansible-playbook is not installed; run bin/setup"):
        ansible_binary(settings)
