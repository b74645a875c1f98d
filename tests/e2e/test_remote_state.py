"""The Terraform states live in the stack's state bucket (in the emulated cloud here, in
the account on aws): the operator's state directory holds caches only. Real moto, real
Terraform, through the real entry points."""

from __future__ import annotations

import shutil

import pytest

from stack import aws, statebackend
from stack.terraform import LEGACY_STATE, ROOT_MODULES, Terraform
from tests.conftest import result_json, run_step

pytestmark = pytest.mark.e2e


def test_the_states_are_in_a_versioned_encrypted_private_state_bucket_not_on_disk(stack):
    s = stack["settings"]
    s3 = aws.client(s, "s3")
    bucket = statebackend.state_bucket_name(s)
    assert bucket == f"{s.name_prefix}-tfstate-{statebackend.account_id(s)}-{s.region}"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert {f"{s.name_prefix}/{root}.tfstate" for root in ROOT_MODULES} <= keys
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    blocked = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(blocked.values()), blocked
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # Terraform's own backend metadata (.terraform/terraform.tfstate) names the backend, not resources.
    on_disk = [p for p in (s.state_path / "terraform").rglob(LEGACY_STATE) if ".terraform" not in p.parts]
    assert on_disk == []
    for root in ROOT_MODULES:
        assert Terraform(s, root).has_state()


def test_deleting_the_terraform_working_copies_loses_nothing(stack):
    s = stack["settings"]
    before = result_json(run_step("flows.status"))
    shutil.rmtree(s.state_path / "terraform")
    report = result_json(run_step("flows.provision"))
    assert report["applied"] is False, "the states in the bucket matched the cloud: nothing to change"
    after = result_json(run_step("flows.status"))
    assert sorted(i["id"] for i in after["instances"]) == sorted(i["id"] for i in before["instances"])
    assert report["data_volume"]["id"] == before["data_volume"]["id"]
    volumes = aws.client(s, "ec2").describe_volumes(
        Filters=[{"Name": "tag:Name", "Values": [s.data_volume_name]}])["Volumes"]
    assert len(volumes) == 1, "a second data volume"


def test_a_stack_with_local_states_is_migrated_to_the_bucket_once_and_says_so(stack):
    """A stack made before remote state: its states are files in the working copies."""
    s = stack["settings"]
    s3 = aws.client(s, "s3")
    bucket = statebackend.state_bucket_name(s)
    for root in ROOT_MODULES:
        tf = Terraform(s, root)
        key = statebackend.state_key(s, root)
        (tf.workdir / LEGACY_STATE).write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        s3.delete_object(Bucket=bucket, Key=key)
        shutil.rmtree(tf.workdir / ".terraform")  # initialised for the local backend, as it was
    proc = run_step("flows.provision")
    assert result_json(proc)["applied"] is False
    for root in ROOT_MODULES:
        assert f"migrated the {root} state" in proc.stderr
        assert statebackend.read_state(s, root)["resources"], f"{root}: no state in the bucket"
        assert not (Terraform(s, root).workdir / LEGACY_STATE).exists()
    again = run_step("flows.provision")
    assert "migrated" not in again.stderr
