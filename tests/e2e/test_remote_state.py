"""The Terraform states and the stack's secrets live in the account (the state bucket,
Secrets Manager; in the emulated cloud here, in
the account on aws): the operator's state directory holds caches only. Real moto, real
Terraform, through the real entry points."""

from __future__ import annotations

import shutil

import pytest

from stack import aws, statebackend
from stack.terraform import LEGACY_STATE, ROOT_MODULES, Terraform
from tests.conftest import TEST_STACK_ENV, clean_env, result_json, run_step

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
    before = result_json(run_step("flows.status", "--json"))
    shutil.rmtree(s.state_path / "terraform")
    report = result_json(run_step("flows.provision"))
    assert report["applied"] is False, "the states in the bucket matched the cloud: nothing to change"
    after = result_json(run_step("flows.status", "--json"))
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


def test_a_setting_that_would_replace_the_data_volume_is_refused_and_nothing_is_applied(stack):
    from tests.conftest import TEST_STACK_ENV, clean_env

    s = stack["settings"]
    volume_before = result_json(run_step("flows.status", "--json"))["data_volume"]["id"]
    moved = clean_env(**TEST_STACK_ENV) | {"STACK_AVAILABILITY_ZONE": f"{s.region}b"}
    proc = run_step("flows.provision", env=moved, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = [line for line in proc.stderr.splitlines() if line.startswith("error:")][-1]
    assert "refused, nothing applied" in last and "aws_ebs_volume.data" in last
    assert "STACK_AVAILABILITY_ZONE" in last
    volumes = aws.client(s, "ec2").describe_volumes(
        Filters=[{"Name": "tag:Name", "Values": [s.data_volume_name]}])["Volumes"]
    assert [v["VolumeId"] for v in volumes] == [volume_before]
    assert volumes[0]["AvailabilityZone"] == s.effective_availability_zone


def test_the_stacks_secrets_are_in_the_account(stack):
    """Each of them, under the stack's prefix. What the state directory holds of them is
    a cache: a teammate's clone, whose state directory is empty, bootstraps the same
    platform from the account alone (the last test of this module)."""
    from stack import accountsecrets

    s = stack["settings"]
    sm = aws.client(s, "secretsmanager")
    names = {x["Name"] for x in sm.list_secrets(Filters=[{"Key": "name", "Values": [f"{s.name_prefix}/"]}])["SecretList"]}
    assert names == {f"{s.name_prefix}/{n}" for n in accountsecrets.made_for(s)}


def test_no_file_under_the_state_directory_holds_an_aws_credential(stack):
    """Terraform, its backend and Ansible's inventory get the keys from the environment
    or the operator's process (stack/credentials.py); the emulator's keys stand in for a
    real account's here."""
    from stack.settings import EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY

    s = stack["settings"]
    holding = [str(p) for p in s.state_path.rglob("*") if p.is_file() and not p.is_symlink()
               and "terraform-plugin-cache" not in p.parts
               and any(k.encode() in p.read_bytes() for k in (EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY))]
    assert holding == []


def test_another_operators_lease_makes_a_command_wait_then_fail_naming_it_and_an_expired_one_is_taken_over(stack):
    import datetime as dt
    import json

    from stack import accountlease
    from tests.conftest import TEST_STACK_ENV, clean_env

    s = stack["settings"]
    s3 = aws.client(s, "s3")
    bucket, key = statebackend.state_bucket_name(s), accountlease.lease_key(s)
    now = dt.datetime.now(dt.UTC)
    alices = {"holder": "alice@her-laptop", "command": "bootstrap (busy-otter)", "pid": 4242,
              "started": now.isoformat(timespec="seconds"),
              "expires": (now + dt.timedelta(minutes=10)).isoformat(timespec="seconds")}
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(alices).encode(), IfNoneMatch="*")
    impatient = clean_env(**TEST_STACK_ENV) | {"STACK_LOCK_WAIT_SECONDS": "4"}
    try:
        proc = run_step("flows.register", env=impatient, check=False)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "alice@her-laptop runs bootstrap (busy-otter)" in proc.stderr.splitlines()[-1]
        # Alice's laptop died: her lease is no longer renewed and expires; the next command takes it over.
        alices["expires"] = (now - dt.timedelta(seconds=1)).isoformat(timespec="seconds")
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(alices).encode())
        proc = run_step("flows.register", env=impatient)
        assert "taking over the stack's lease" in proc.stderr
        with pytest.raises(s3.exceptions.NoSuchKey):  # and released it when done
            s3.get_object(Bucket=bucket, Key=key)
    finally:
        s3.delete_object(Bucket=bucket, Key=key)


def test_a_teammates_clone_with_its_own_state_directory_finds_the_stack_and_makes_nothing_new(stack, tmp_path):
    """Another operator (here: an empty state directory, and a control plane of its own on
    another port) bootstraps the same stack: the states, the SSH key, the auth string and
    the CA come from the account, so every instance, the data volume and the bucket are
    the same ones, and the platform passes its smoke with the team's auth string. (So
    deleting the caches of the secrets in a state directory loses none of them.)"""
    from stack import controlplane, platform, tls
    from stack.settings import StackSettings

    s = stack["settings"]
    instances = sorted(i["id"] for i in aws.running_hosts(s))
    volumes = sorted(v["VolumeId"] for v in aws.client(s, "ec2").describe_volumes()["Volumes"])
    auth, ca = platform.auth_string(s), tls.ca_fingerprint(s)
    teammate_dir = tmp_path / "teammate-state"
    teammate = StackSettings(name_prefix=s.name_prefix, state_dir=teammate_dir, emulator_port=s.emulator_port,
                             control_plane_port=4400, platform_port=s.platform_port)
    try:
        report = result_json(run_step("flows.bootstrap", env=clean_env(**{
            **TEST_STACK_ENV, "STACK_STATE_DIR": str(teammate_dir), "STACK_CONTROL_PLANE_PORT": "4400"}), timeout=1800))
        assert all(c["ok"] for c in report["smoke"]["cases"]), report["smoke"]
        assert sorted(i["id"] for i in aws.running_hosts(s)) == instances
        assert sorted(v["VolumeId"] for v in aws.client(s, "ec2").describe_volumes()["Volumes"]) == volumes
        assert platform.auth_file(teammate).read_text().strip() == auth
        assert tls.ca_fingerprint(teammate) == ca
    finally:
        controlplane.stop(teammate)
