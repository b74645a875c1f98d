"""The playbooks and roles pass ansible-lint (its production profile, ansible/.ansible-lint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stack.ansible import ANSIBLE_DIR


def test_ansible_lint_passes():
    lint = Path(sys.executable).parent / "ansible-lint"
    proc = subprocess.run([str(lint), "--offline", "-q"], cwd=ANSIBLE_DIR, capture_output=True, text=True,
                          env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
