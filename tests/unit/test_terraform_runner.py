"""The Terraform wrapper (stack/terraform.py): transient errors told apart (and retried by provision's tasks),
plan parsing and its markdown, a destroy reusing the last apply's inputs. Pure Python: no terraform binary,
no cloud."""

from __future__ import annotations

from stack.terraform import PlanResult, _plan_result, is_transient


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


class _FailedState:
    def __init__(self, exc: Exception):
        self.exc = exc

    def result(self):
        raise self.exc


def test_terraform_tasks_retry_transient_errors_only():
    from flows.provision import retry_if_transient
    from stack.terraform import TerraformError

    transient = TerraformError(["terraform", "plan"], 1, "connection refused", transient=True)
    config = TerraformError(["terraform", "plan"], 1, "Unsupported argument", transient=False)
    assert retry_if_transient(None, None, _FailedState(transient)) is True
    assert retry_if_transient(None, None, _FailedState(config)) is False
    assert retry_if_transient(None, None, _FailedState(ValueError("bug"))) is False


def test_terraform_destroy_reuses_the_inputs_of_the_last_apply(tmp_path):
    from stack.settings import StackSettings
    from stack.terraform import COMPUTE, Terraform, ssh_public_key

    settings = StackSettings(state_dir=tmp_path)
    ssh_public_key(settings, create=True)  # provision makes it before Terraform runs
    inputs = {"ami_id": "ami-0123456789abcdef0", "data_volume_id": "vol-0123456789abcdef0"}
    tf = Terraform(settings, COMPUTE, inputs=inputs)
    tf.prepare()
    assert Terraform(settings, COMPUTE).last_inputs() == inputs


def test_an_applys_own_planning_is_read_as_its_plan():
    # `terraform apply -json` with no plan file: its planning, then the apply's summary.
    stream = [
        {"type": "planned_change", "change": {"action": "create", "resource": {"addr": "aws_s3_bucket.code"}}},
        {"type": "change_summary", "changes": {"add": 1, "change": 0, "remove": 0, "operation": "plan"}},
        {"type": "change_summary", "changes": {"add": 1, "change": 0, "remove": 0, "operation": "apply"}},
    ]
    plan = _plan_result(stream, has_changes=True)
    assert plan.changes == [("create", "aws_s3_bucket.code")]
    assert plan.summary == {"add": 1, "change": 0, "remove": 0}
    assert "1 to add" in plan.markdown() and plan.plan_file is None
