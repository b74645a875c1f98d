"""stack/accountlease.py: which lease a command may take over before it expires. (The
lease itself, written and taken over in the emulated account: tests/e2e/test_remote_state.py
and, for a killed command, tests/e2e/test_hosts_and_configure.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

from stack import accountlease


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has this number now


def test_a_lease_whose_process_on_this_machine_is_gone_is_taken_over_at_once():
    assert accountlease._died_here({"holder": accountlease._holder(), "boot": accountlease._boot(),
                                    "pid": _dead_pid()}) is True


def test_a_lease_of_a_running_process_another_machine_or_this_process_waits_for_its_expiry():
    here = {"holder": accountlease._holder(), "boot": accountlease._boot()}
    assert accountlease._died_here({**here, "pid": os.getppid()}) is False  # running
    assert accountlease._died_here({**here, "pid": os.getpid()}) is False   # ours
    # Another machine's process (or one of an earlier boot, or of another machine with the
    # same name) cannot be looked at from here, dead or alive.
    assert accountlease._died_here({**here, "holder": "alice@her-laptop", "pid": _dead_pid()}) is False
    assert accountlease._died_here({**here, "boot": "another-boot", "pid": _dead_pid()}) is False
    assert accountlease._died_here(here) is False  # no process named
