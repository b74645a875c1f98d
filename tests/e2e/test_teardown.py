"""teardown --all destroys every resource of the stack, data included; a second one does nothing.
(The nightly teardown, which keeps the data, is tested in test_durability.py.)"""

from __future__ import annotations

import subprocess

import pytest

from stack import aws, statebackend
from tests.conftest import result_json, run_step

pytestmark = [pytest.mark.e2e, pytest.mark.teardown_last]


def test_teardown_all_without_yes_refuses_when_not_in_a_terminal(stack):
    proc = run_step("flows.teardown", "--all", check=False)
    assert proc.returncode == 2
    assert "destroys the platform's DATA" in proc.stderr and "--yes" in proc.stderr
    assert len(aws.running_hosts(stack["settings"])) == 2  # nothing destroyed


def test_teardown_all_leaves_nothing_and_a_second_teardown_does_nothing(stack):
    s = stack["settings"]
    first = result_json(run_step("flows.teardown", "--all", "--yes"))
    assert first["scope"] == "all" and first["destroyed"] == ["compute", "data"]
    assert sorted(first["hosts_removed"]) == ["p2test-ec2-0", "p2test-ec2-1"]

    assert aws.project_instances(s) == []
    ec2 = aws.client(s, "ec2")
    tagging = aws.client(s, "resourcegroupstaggingapi")
    left = tagging.get_resources(TagFilters=[{"Key": "Project", "Values": [s.name_prefix]}])["ResourceTagMappingList"]
    # Like AWS, the emulator lists terminated instances (with their tags) for a while.
    terminated = {i["InstanceId"] for r in ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["terminated"]}])["Reservations"] for i in r["Instances"]}
    assert [r["ResourceARN"] for r in left if r["ResourceARN"].rsplit("/", 1)[-1] not in terminated] == []
    assert ec2.describe_volumes(Filters=[{"Name": "tag:Project", "Values": [s.name_prefix]}])["Volumes"] == []
    assert statebackend.code_bucket_name(s) not in [b["Name"] for b in aws.client(s, "s3").list_buckets()["Buckets"]]
    roles = [r["RoleName"] for r in aws.client(s, "iam").list_roles()["Roles"]]
    assert not [r for r in roles if r.startswith("p2test-")]
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert "p2test-platform" not in [g["GroupName"] for g in groups]
    names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    assert "p2test-ec2" not in names and "p2test-registry" not in names
    volumes = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True).stdout.split()
    assert s.data_volume_name not in volumes and not [v for v in volumes if v.startswith(("p2test-ec2", "p2test-registry"))]
    assert aws.client(s, "ecr").describe_repositories()["repositories"] == []
    assert list((s.state_path / "backups").glob("*.dump")) == []
    # The stack's secrets and its Terraform states went with the data.
    assert aws.client(s, "secretsmanager").list_secrets(
        Filters=[{"Key": "name", "Values": [f"{s.name_prefix}/"]}])["SecretList"] == []
    assert statebackend.state_bucket_name(s) not in [b["Name"] for b in aws.client(s, "s3").list_buckets()["Buckets"]]

    second = result_json(run_step("flows.teardown", "--all", "--yes"))
    assert second == {"scope": "all", "destroyed": [], "hosts_removed": [], "backup": None, "data_removed": [],
                      "terraform_processes": 0}
