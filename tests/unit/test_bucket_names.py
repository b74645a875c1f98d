"""The code bucket's name (stack/statebackend.py code_bucket_name), against moto's S3 and
STS in-process: named for the account and region, a stack keeps the name it was made
with, STACK_BUCKET_NAME wins, and a name S3 would refuse is one line before anything is
made."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from stack import statebackend
from stack.proc import StackError
from stack.settings import StackSettings


@pytest.fixture
def account(monkeypatch):
    with mock_aws():
        monkeypatch.setattr(statebackend.aws, "client",
                            lambda settings, service: boto3.client(service, region_name=settings.region))
        monkeypatch.setattr(statebackend, "_accounts", {})
        monkeypatch.setattr(statebackend, "_code_buckets", {})
        yield boto3.client("s3", region_name="eu-west-1")


def settings(tmp_path, **kw) -> StackSettings:
    return StackSettings(target="local", state_dir=tmp_path, name_prefix="team", region="eu-west-1", **kw)


def test_a_new_stack_names_its_code_bucket_for_the_account_and_region(account, tmp_path, monkeypatch):
    assert statebackend.code_bucket_name(settings(tmp_path)) == "team-flow-code-123456789012-eu-west-1"
    # Another team's account with the same prefix and region: another name (bucket names are global).
    monkeypatch.setattr(statebackend, "_code_buckets", {})
    monkeypatch.setattr(statebackend, "account_id", lambda s: "210987654321")
    assert statebackend.code_bucket_name(settings(tmp_path)) == "team-flow-code-210987654321-eu-west-1"


def test_a_stack_keeps_the_bucket_name_its_data_state_records(account, tmp_path, monkeypatch):
    s = settings(tmp_path)
    statebackend.ensure_state_bucket(s)
    monkeypatch.setattr(statebackend, "_code_buckets", {})
    older = {"outputs": {"bucket_name": {"value": "team-flow-code-1a2b3c4d", "type": "string"}}}
    account.put_object(Bucket=statebackend.state_bucket_name(s), Key=statebackend.state_key(s, "data"),
                       Body=json.dumps(older).encode())
    assert statebackend.code_bucket_name(s) == "team-flow-code-1a2b3c4d"


def test_a_stack_from_before_remote_state_keeps_its_bucket_name_before_migrating(account, tmp_path):
    legacy = tmp_path / "terraform" / "data" / "terraform.tfstate"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"outputs": {"bucket_name": {"value": "team-flow-code-99aa88bb"}}}))
    assert statebackend.code_bucket_name(settings(tmp_path)) == "team-flow-code-99aa88bb"


def test_the_bucket_name_setting_wins(account, tmp_path):
    assert statebackend.code_bucket_name(settings(tmp_path, bucket_name="our-own-bucket")) == "our-own-bucket"


def test_the_longest_prefix_in_the_longest_region_still_makes_a_valid_bucket_name(account, tmp_path):
    s = StackSettings(target="local", state_dir=tmp_path, name_prefix="a-prefix-of-twenty-c",
                      region="ap-southeast-1")
    name = statebackend.code_bucket_name(s)
    assert len(name) <= 63 and statebackend.BUCKET_NAME.match(name), name


def test_read_only_commands_get_no_name_instead_of_an_error_when_the_cloud_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(statebackend, "_code_buckets", {})

    def down(settings):
        raise StackError("could not read the AWS account id (the emulated cloud is down)")

    monkeypatch.setattr(statebackend, "account_id", down)
    monkeypatch.setattr(statebackend, "read_state", lambda settings, root: None)
    assert statebackend.code_bucket_name_or_none(settings(tmp_path)) is None
    assert statebackend.code_bucket_name_or_none(settings(tmp_path, bucket_name="our-own-bucket")) == "our-own-bucket"


def test_after_teardown_all_a_new_stack_of_the_prefix_does_not_inherit_an_older_name(account, tmp_path):
    legacy = tmp_path / "terraform" / "data" / "terraform.tfstate"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"outputs": {"bucket_name": {"value": "team-flow-code-99aa88bb"}}}))
    s = settings(tmp_path)
    assert statebackend.code_bucket_name(s) == "team-flow-code-99aa88bb"
    legacy.unlink()  # the data module destroyed
    statebackend.forget_code_bucket_name(s)
    assert statebackend.code_bucket_name(s) == "team-flow-code-123456789012-eu-west-1"
