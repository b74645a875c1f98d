"""The playbooks and roles pass ansible-lint (its production profile, ansible/.ansible-lint)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stack.ansible import ANSIBLE_DIR
from tests.conftest import early_result


EARLY_FIXTURE = "lint"


def start_early(env: dict[str, str]) -> subprocess.CompletedProcess:
    ansible_lint = Path(sys.executable).parent / "ansible-lint"
    return subprocess.run([str(ansible_lint), "--offline", "-q"], cwd=ANSIBLE_DIR, capture_output=True, text=True,
                          env={**env, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg")})


@pytest.fixture(scope="module")
def lint() -> subprocess.CompletedProcess:
    return early_result(__name__, start_early)


def test_ansible_lint_passes(lint):
    assert lint.returncode == 0, lint.stdout + lint.stderr
