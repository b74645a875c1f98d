"""Provision against a real moto server with real Terraform, through the real entry point."""

from __future__ import annotations

import json

import pytest

from stack import aws, statebackend
from tests.conftest import REPO, TEST_STACK_ENV, clean_env, result_json, run_step
from tests.e2e.test_platform import platform_objects

pytestmark = pytest.mark.e2e


def test_bootstrap_creates_server_and_worker_with_tags_and_imdsv2(stack):
    s = stack["settings"]
    ec2 = aws.client(s, "ec2")
    reservations = ec2.describe_instances(Filters=[
        {"Name": "tag:Project", "Values": [s.name_prefix]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ])["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    tags = {(t["Key"], t["Value"]) for i in instances for t in i["Tags"]}
    assert ("Name", "p2test-ec2-0") in tags and ("Name", "p2test-ec2-1") in tags
    roles = sorted({t["Value"] for i in instances for t in i["Tags"] if t["Key"] == "Role"})
    assert roles == ["server", "worker"]
    for i in instances:
        assert i["MetadataOptions"]["HttpTokens"] == "required"
        assert i["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
        role = next(t["Value"] for t in i["Tags"] if t["Key"] == "Role")
        assert i["IamInstanceProfile"]["Arn"].endswith(f"/p2test-{s.region}-{role}")


def test_each_host_role_may_do_only_its_own_job(stack):
    """Worker hosts (and so every flow run) read the flow code; the server writes
    backups; neither reads a backup (the emulator does not enforce IAM: the documents
    are what is checked)."""
    s = stack["settings"]
    iam = aws.client(s, "iam")

    def allowed(role: str) -> dict[str, set[str]]:
        grants: dict[str, set[str]] = {}
        for name in iam.list_role_policies(RoleName=f"p2test-{s.region}-{role}")["PolicyNames"]:
            doc = iam.get_role_policy(RoleName=f"p2test-{s.region}-{role}", PolicyName=name)["PolicyDocument"]
            for st in doc["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                for a in actions:
                    grants.setdefault(a, set()).update(resources)
        assert not iam.list_attached_role_policies(RoleName=f"p2test-{s.region}-{role}")["AttachedPolicies"]
        return grants

    bucket = f"arn:aws:s3:::{statebackend.code_bucket_name(s)}"
    worker, server = allowed("worker"), allowed("server")
    assert worker["s3:GetObject"] == {f"{bucket}/testflow/*"}
    assert "s3:PutObject" not in worker and "s3:GetObject" not in server
    assert server["s3:PutObject"] == {f"{bucket}/backups/*"}
    assert not any(a.startswith("ssm:GetParameter") for a in worker | server)


def test_api_port_is_not_open_to_the_world(stack):
    s = stack["settings"]
    groups = aws.client(s, "ec2").describe_security_groups(
        Filters=[{"Name": "tag:Project", "Values": [s.name_prefix]}])["SecurityGroups"]
    assert groups
    for g in groups:
        cidrs: dict[int, list[str]] = {}
        for perm in g["IpPermissions"]:
            # Only the TLS port and SSH are open, over TCP, the TLS port also inside the group.
            assert perm["IpProtocol"] == "tcp" and perm.get("FromPort") in (4200, 22), perm
            cidrs.setdefault(perm["FromPort"], []).extend(r["CidrIp"] for r in perm.get("IpRanges", []))
        assert cidrs == {4200: ["127.0.0.1/32"], 22: ["127.0.0.1/32"]}


def test_code_bucket_is_encrypted_private_versioned_and_its_backups_expire(stack):
    s = stack["settings"]
    s3 = aws.client(s, "s3")
    bucket = stack["first_bootstrap"]["provision"]["bucket_name"]
    assert bucket == statebackend.code_bucket_name(s)
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    # Backups expire after STACK_BACKUP_RETENTION_DAYS (put by provision, not Terraform);
    # flow code does not.
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [(r["Filter"]["Prefix"], r["Status"], r["Expiration"]["Days"], r["NoncurrentVersionExpiration"]["NoncurrentDays"])
            for r in rules] == [("backups/", "Enabled", s.backup_retention_days, s.backup_retention_days)], rules
    # The TLS-only policy is off on the emulator (plain HTTP); terraform test asserts it
    # is on for real AWS.
    assert s3.list_objects_v2(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_second_bootstrap_skips_every_step_and_force_runs_them_all(stack):
    second = result_json(run_step("flows.bootstrap"))
    outcomes = {s["step"]: s["outcome"] for s in second["steps"]}
    assert outcomes == {"preflight": "ran", "bake": "skipped", "provision": "skipped", "hosts": "skipped",
                        "configure": "skipped", "restore": "skipped", "register": "skipped", "deploy": "skipped",
                        "smoke": "ran"}
    # Nothing changed: a health check (every worker online) instead of the five cases.
    assert second["smoke"]["health_only"] is True
    assert {c["case"] for c in second["smoke"]["cases"]} == {"worker p2test-ec2-1-process", "worker p2test-ec2-1-docker"}

    # --force runs every step again, register and deploy a second time: they leave the
    # same objects (the same ids, job templates, queues and deployments), none added.
    objects = platform_objects(stack["settings"])
    forced = result_json(run_step("flows.bootstrap", "--force"))
    assert all(s["outcome"] == "ran" for s in forced["steps"] if s["step"] != "restore"), forced["steps"]
    assert forced["registration"]["work_pools"]["process"] == ["default", "dev"]
    assert platform_objects(stack["settings"]) == objects
    assert forced["smoke"]["health_only"] is False
    assert forced["provision"]["applied"] is False
    # Per root module (data, compute): init skipped, one plan, one output, no apply.
    assert forced["provision"]["terraform_processes"] == 4
    assert forced["provision"]["created_in_one_apply"] == []
    first = stack["first_bootstrap"]["provision"]
    assert first["applied"] is True
    # From nothing, each root module is created by one apply, with no separate plan.
    assert first["created_in_one_apply"] == ["data", "compute"]

    status = result_json(run_step("flows.status", "--json"))
    assert status["steps"]["configure"]["state"] == "completed" and status["steps"]["configure"]["duration_s"] > 0
    assert status["control_plane_api_url"] == "http://127.0.0.1:4300/api"


def test_status_lists_instances_with_their_hosts_and_the_prefect_each_runs(stack):
    status = json.loads(run_step("flows.status", "--json").stdout)
    assert status["target"] == "local"
    assert status["emulator_endpoint"] == "http://127.0.0.1:4666"
    assert status["bucket"] == statebackend.code_bucket_name(stack["settings"])
    by_name = {i["name"]: i for i in status["instances"]}
    assert set(by_name) == {"p2test-ec2-0", "p2test-ec2-1"}
    for name, inst in by_name.items():
        assert set(inst) >= {"id", "name", "role", "state", "private_ip", "host"}
        assert inst["state"] == "running" and inst["host"] == name
    # The versions running, as the server and each host's virtualenv say (not the pin).
    pinned = next(line.split("==")[1] for line in (REPO / "constraints.txt").read_text().splitlines()
                  if line.startswith("prefect=="))
    versions = status["versions"]
    assert versions["server"] == pinned
    assert versions["hosts"] == {"p2test-ec2-0": pinned, "p2test-ec2-1": pinned}, versions["unanswered"]
    assert versions["unanswered"] == {}


def test_a_subnet_outside_the_data_volumes_zone_is_refused_before_anything_changes(stack):
    """STACK_SUBNET_ID (an account without a default VPC) is checked against EC2 by
    preflight: a subnet in another zone than the data volume stops the bootstrap with the
    zone to set, exit 2, and the instances are those of before."""
    s = stack["settings"]
    ec2 = aws.client(s, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24",
                               AvailabilityZone=f"{s.region}b")["Subnet"]["SubnetId"]
    try:
        before = sorted(i["id"] for i in aws.running_hosts(s))
        proc = run_step("flows.bootstrap", env=clean_env(**TEST_STACK_ENV, STACK_SUBNET_ID=subnet), check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"STACK_AVAILABILITY_ZONE={s.region}b" in proc.stderr
        assert sorted(i["id"] for i in aws.running_hosts(s)) == before
    finally:
        ec2.delete_subnet(SubnetId=subnet)
        ec2.delete_vpc(VpcId=vpc)


def test_a_state_lock_left_by_a_killed_command_is_removed_and_the_command_goes_on(stack):
    """A command killed mid-Terraform leaves the state's lock file behind (S3-native lock);
    the next command, which holds the stack's slot and lease, removes it and goes on."""
    from stack import statebackend

    s = stack["settings"]
    bucket = statebackend.state_bucket_name(s)
    lock_key = statebackend.state_key(s, "compute") + ".tflock"
    s3 = aws.client(s, "s3")
    s3.put_object(Bucket=bucket, Key=lock_key, Body=json.dumps(
        {"ID": "0d1e5e2a-0000-4000-8000-000000000000", "Operation": "OperationTypeApply", "Who": "killed@elsewhere",
         "Path": f"{bucket}/{lock_key.removesuffix('.tflock')}"}).encode())
    proc = run_step("flows.bootstrap", "--only", "provision")
    assert "removed a stale Terraform state lock of compute" in proc.stderr and "killed@elsewhere" in proc.stderr
    assert lock_key not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
