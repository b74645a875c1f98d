"""Teardown destroys every tagged resource and removes the hosts; a second one is a no-op."""

from __future__ import annotations

import subprocess

import pytest

from stack import aws
from tests.conftest import result_json, run_step

pytestmark = [pytest.mark.e2e, pytest.mark.teardown_last]


def test_teardown_leaves_nothing_and_a_second_teardown_does_nothing(stack):
    s = stack["settings"]
    first = result_json(run_step("flows.teardown"))
    assert first["destroyed"] is True
    assert sorted(first["hosts_removed"]) == ["p2test-ec2-0", "p2test-ec2-1"]

    assert aws.project_instances(s) == []
    tagging = aws.client(s, "resourcegroupstaggingapi")
    left = tagging.get_resources(TagFilters=[{"Key": "Project", "Values": [s.name_prefix]}])["ResourceTagMappingList"]
    # Like AWS, the emulator lists terminated instances (with their tags) for a while.
    terminated = {i["InstanceId"] for r in aws.client(s, "ec2").describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["terminated"]}])["Reservations"] for i in r["Instances"]}
    assert [r["ResourceARN"] for r in left if r["ResourceARN"].rsplit("/", 1)[-1] not in terminated] == []
    assert s.effective_bucket_name not in [b["Name"] for b in aws.client(s, "s3").list_buckets()["Buckets"]]
    roles = [r["RoleName"] for r in aws.client(s, "iam").list_roles()["Roles"]]
    assert "p2test-host" not in roles
    groups = aws.client(s, "ec2").describe_security_groups()["SecurityGroups"]
    assert "p2test-platform" not in [g["GroupName"] for g in groups]
    names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    assert "p2test-ec2" not in names

    second = result_json(run_step("flows.teardown"))
    assert second == {"destroyed": False, "hosts_removed": [], "terraform_processes": 0}
