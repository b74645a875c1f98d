"""Fast checks of the runners' pure parts."""

from __future__ import annotations

import pytest

from stack.ansible import pinned_versions
from stack.proc import CommandError, redact, run
from stack.terraform import PlanResult, is_transient


def test_transient_terraform_errors_are_told_apart_from_configuration_errors():
    assert is_transient("dial tcp 127.0.0.1:4566: connect: connection refused")
    assert is_transient("ThrottlingException: Rate exceeded")
    assert not is_transient('Unsupported argument: An argument named "foo" is not expected here.')


def test_plan_markdown_lists_each_change():
    plan = PlanResult(True, {"add": 2, "change": 0, "remove": 1},
                      [("create", "aws_s3_bucket.code"), ("delete", "aws_instance.host[\"x\"]")])
    md = plan.markdown()
    assert "2 to add, 0 to change, 1 to destroy" in md
    assert "| `aws_s3_bucket.code` | create |" in md


def test_runner_redacts_secrets_and_names_the_failed_command():
    lines = []
    run(["sh", "-c", "echo token=s3cr3t"], secrets=["s3cr3t"], on_line=lines.append)
    assert lines == ["token=****"]
    with pytest.raises(CommandError, match=r"`sh -c` failed \(exit 3\): boom"):
        run(["sh", "-c", "echo boom; exit 3"], quiet=True)


def test_host_packages_are_pinned_from_constraints():
    pins = pinned_versions()
    assert "prefect==3.8.8" in pins
    assert all("==" in p for p in pins)
