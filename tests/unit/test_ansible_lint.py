"""The playbooks and roles pass ansible-lint (its production profile, ansible/.ansible-lint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stack.ansible import ANSIBLE_DIR
from tests.conftest import early_result


def start_early() -> subprocess.CompletedProcess:
    lint = Path(sys.executable).parent / "ansible-lint"
    return subprocess.run([str(lint), "--offline", "-q"], cwd=ANSIBLE_DIR, capture_output=True, text=True,
                          env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg")})


def test_ansible_lint_passes():
    proc = early_result(__name__, start_early)
    assert proc.returncode == 0, proc.stdout + proc.stderr
