"""The local control plane: a Prefect server on 127.0.0.1:<control_plane_port> (SQLite in
the state directory) that records every provisioning step's runs, logs and artifacts.

It is started detached on first use and left running, so the UI at
http://127.0.0.1:<port> shows the history; ``stop()`` ends it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from stack.proc import StackError, get_logger
from stack.settings import REPO_ROOT, StackSettings


def _home(settings: StackSettings) -> Path:
    return settings.state_path / "controlplane"


def healthy(settings: StackSettings) -> bool:
    try:
        url = settings.control_plane_api_url + "/health"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def ensure_running(settings: StackSettings, timeout: float = 120) -> str:
    """Start the control-plane server unless it answers; return its API URL."""
    if healthy(settings):
        return settings.control_plane_api_url
    home = _home(settings)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    get_logger().info("starting the control-plane Prefect server on 127.0.0.1:%s (log: %s)",
                      settings.control_plane_port, log_path)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
        # The UI is rendered here rather than into the virtualenv (which bin/setup may rebuild).
        "PREFECT_UI_STATIC_DIRECTORY": str(home / "ui"),
        # The UI's API is this server's: by default it would be 4200's, whatever --port says
        # (a control plane on another port showed the runs of the one on 4200).
        "PREFECT_UI_API_URL": settings.control_plane_api_url,
    }
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(settings.control_plane_port)],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,  # outlives this process, like a service
        )
    (home / "server.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(settings):
            return settings.control_plane_api_url
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace").splitlines()[-10:]
    raise StackError(
        f"the control-plane Prefect server on port {settings.control_plane_port} did not start "
        f"(is the port taken? set STACK_CONTROL_PLANE_PORT). Last log lines:\n" + "\n".join(tail)
    )


def _our_process(pid_file: Path, module: str) -> int | None:
    """The pid in ``pid_file`` when that process is alive and is ``python -m <module>``
    (a reused pid belongs to some other program and does not count)."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if module.encode() in cmdline else None


def settings_fingerprint(settings: StackSettings) -> str:
    """What the runner serves depends on the settings and on the checkout it runs in (each
    flow run loads its flow from the runner's working directory): a change of either, a
    command run from another clone of the repository, means a restart."""
    served = {"settings": settings.model_dump(mode="json"), "checkout": str(REPO_ROOT)}
    return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:16]


# Keys a shell holds for a while (an STS or SSO session's): a runner that lives for days
# must not copy them, or every scheduled run after they expire fails.
STATIC_AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def runner_env(settings: StackSettings, environ: dict[str, str]) -> dict[str, str]:
    """The runner's environment: the operator's, without the AWS keys of this shell, so
    each scheduled run reads the credential chain (profile, SSO cache, role) when it
    starts; plus the stack's settings and the control plane's API."""
    held = [k for k in STATIC_AWS_KEYS if k in environ]
    if held and settings.target == "aws":
        get_logger().warning(
            "the control plane's scheduled runs (the nightly teardown) do not use %s of this shell, which "
            "expire: each run reads your AWS profile chain when it starts; set AWS_PROFILE (SSO: aws sso login) "
            "so that they find credentials", ", ".join(held))
    env = {k: v for k, v in environ.items() if k not in STATIC_AWS_KEYS}
    env |= {"PREFECT_HOME": str(_home(settings)), "PREFECT_API_URL": settings.control_plane_api_url}
    # An emptied STACK_NIGHTLY_TEARDOWN_CRON serves the teardown with no schedule; since
    # Prefect 3.9 that keeps the old schedule unless this opt-in says to clear it.
    env |= {"PREFECT_DEPLOYMENTS_CLEAR_SCHEDULES_ON_EMPTY": "true"}
    env |= {f"STACK_{k.upper()}": str(v) for k, v in settings.model_dump(exclude_none=True).items()}
    return env


def ensure_runner(settings: StackSettings) -> None:
    """Serve the step deployments (Run buttons, nightly teardown, backups), restarting the
    runner when the settings it was started with differ from the current ones."""
    home = _home(settings)
    pid_file, stamp = home / "runner.pid", home / "runner.settings"
    fingerprint = settings_fingerprint(settings)
    pid = _our_process(pid_file, "flows.serve")
    if pid is not None:
        if stamp.exists() and stamp.read_text() == fingerprint:
            return
        get_logger().info("the settings or the checkout changed since the control-plane runner started; "
                          "restarting it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    env = runner_env(settings, dict(os.environ))
    home.mkdir(parents=True, exist_ok=True)  # a state directory deleted while the control plane ran
    with open(home / "runner.log", "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=str(REPO_ROOT),
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    stamp.write_text(fingerprint)


def stop(settings: StackSettings) -> list[str]:
    """Stop the control-plane runner and server (only processes that are theirs); returns what was stopped."""
    stopped = []
    for name, module in (("runner", "flows.serve"), ("server", "prefect")):
        pid_file = _home(settings) / f"{name}.pid"
        pid = _our_process(pid_file, module)
        if pid is not None:
            _terminate(pid)
            stopped.append(name)
        pid_file.unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, grace_seconds: float = 15) -> None:
    """SIGTERM a process group, and SIGKILL it when it is still there after the grace.
    The runner shuts down gracefully (it pauses its deployments on the server), and a
    runner left waiting for a server that is already gone could outlive ``stop``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)   # reap it when it is our own child
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def describe(settings: StackSettings) -> dict:
    """Whether the server answers and the runner runs with the current settings."""
    home = _home(settings)
    runner = _our_process(home / "runner.pid", "flows.serve")
    stamp = home / "runner.settings"
    return {
        "api_url": settings.control_plane_api_url,
        "server": "running" if healthy(settings) else "stopped",
        "runner": "stopped" if runner is None else (
            "running" if stamp.exists() and stamp.read_text() == settings_fingerprint(settings)
            else "running with old settings (restarted by the next command)"),
        "runner_pid": runner,
        "home": str(home),
    }


@contextlib.contextmanager
def client_settings(settings: StackSettings) -> Iterator[str]:
    """Point Prefect in this process at the control plane (started if needed)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = ensure_running(settings)
    ensure_runner(settings)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
