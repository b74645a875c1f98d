"""stack/accountlease.py: which lease a command may take over before it expires. (The
lease itself, written and taken over in the emulated account: tests/e2e/test_remote_state.py
and, for a killed command, tests/e2e/test_hosts_and_configure.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

from stack import accountlease


def _dead_group() -> int:
    """A process group that existed and is gone: a session leader that exited, reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    child.wait()
    return child.pid


def _here(**lease) -> dict:
    return {"holder": accountlease._holder(), "machine": accountlease._machine(), **lease}


def test_a_lease_whose_process_group_on_this_machine_is_gone_is_taken_over_at_once():
    assert accountlease._machine()  # Linux: the boot and the pid namespace
    assert accountlease.died_here(_here(group=_dead_group())) is True


def test_a_lease_that_may_still_be_held_waits_for_its_expiry():
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True) as alive:
        try:
            assert accountlease.died_here(_here(group=alive.pid)) is False  # a group still running
        finally:
            alive.kill()
    assert accountlease.died_here(_here(group=os.getpgid(0))) is False     # ours
    assert accountlease.died_here(_here()) is False                         # no group named (an older lease)
    # Another machine's processes cannot be looked at from here, dead or alive: another
    # host name, or the same name in another boot, container or WSL distribution.
    assert accountlease.died_here(_here(holder="alice@her-laptop", group=_dead_group())) is False
    assert accountlease.died_here(_here(machine="another-boot pid:[1]", group=_dead_group())) is False


def test_where_machines_cannot_be_told_apart_no_lease_is_taken_over_early(monkeypatch):
    monkeypatch.setattr(accountlease, "_machine", lambda: "")  # not Linux
    assert accountlease.died_here(_here(group=_dead_group())) is False
