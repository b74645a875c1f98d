"""The AMI bake's AWS calls (stack/bake.py) against moto's in-process EC2: the builder's
launch and its clean-up, the AMI found by its key, older AMIs deregistered with their
snapshots, the settings' choice. (The whole bake, over SSH on the twin, is the e2e test
in tests/e2e/test_durability.py.)"""

from __future__ import annotations

import time

import pytest
from moto import mock_aws

from stack import aws, bake
from stack.proc import StackError
from stack.settings import EMULATOR_DEFAULT_AMI, StackSettings

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb3fPSk1kEF8rDf5kN3oV5ttGf5bBE8Yd6Z3WJ5Qr0T test"


@pytest.fixture
def aws_settings(tmp_path, monkeypatch) -> StackSettings:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield StackSettings(target="aws", region="us-east-1", operator_cidr="203.0.113.0/24",
                            ami_id=EMULATOR_DEFAULT_AMI, state_dir=tmp_path, name_prefix="p2bake")


def test_the_bake_is_an_ami_on_aws_and_a_container_image_is_refused_there(tmp_path, aws_settings):
    assert aws_settings.effective_bake == "ami"
    assert aws_settings.model_copy(update={"host_image": "stock"}).effective_bake is None
    local = StackSettings(target="local", state_dir=tmp_path)
    assert local.effective_bake == "container"
    assert local.model_copy(update={"bake": "ami"}).effective_bake == "ami"
    with pytest.raises(ValueError, match="bake: on aws the baked host image is an AMI"):
        StackSettings(target="aws", region="us-east-1", operator_cidr="203.0.113.0/24", state_dir=tmp_path,
                      ami_id=EMULATOR_DEFAULT_AMI, bake="container")


def test_the_bake_key_follows_the_stock_ami_and_the_prefect_version_and_nothing_else(aws_settings):
    key = bake.bake_key(aws_settings)
    assert len(key) == 12 and bake.bake_key(aws_settings) == key
    assert bake.bake_key(aws_settings.model_copy(update={"ami_id": "ami-0123456789abcdef0"})) != key
    assert bake.bake_key(aws_settings.model_copy(update={"prefect_version": "3.8.8"})) != key
    assert bake.bake_key(aws_settings.model_copy(update={"worker_count": 3, "name_prefix": "other"})) == key


def test_the_builder_gets_its_own_key_pair_and_group_and_all_three_go_afterwards(aws_settings):
    ec2 = aws.client(aws_settings, "ec2")
    ec2.import_key_pair(KeyName="p2bake-operator", PublicKeyMaterial=PUBLIC_KEY.encode())  # the compute module's
    builder = bake.launch_builder(aws_settings, PUBLIC_KEY)
    assert builder["name"] == "p2bake-bake" and builder["state"] == "running" and builder["ssh_port"] == 22
    inst = ec2.describe_instances(InstanceIds=[builder["id"]])["Reservations"][0]["Instances"][0]
    assert inst["ImageId"] == EMULATOR_DEFAULT_AMI and inst["KeyName"] == "p2bake-bake"
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    group = ec2.describe_security_groups(GroupIds=[inst["SecurityGroups"][0]["GroupId"]])["SecurityGroups"][0]
    assert [(p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in group["IpPermissions"]] == \
        [(22, ["203.0.113.0/24"])]  # SSH from the operator only
    # Not one of the stack's hosts: the inventory and the steps never see it.
    assert aws.project_instances(aws_settings) == []

    assert bake.remove_builders(aws_settings) == [builder["id"]]
    assert ec2.describe_instances(InstanceIds=[builder["id"]])["Reservations"][0]["Instances"][0]["State"]["Name"] \
        == "terminated"
    mine = [{"Name": f"tag:{bake.BUILDER_TAG}", "Values": ["p2bake"]}]
    assert ec2.describe_security_groups(Filters=mine)["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=mine)["KeyPairs"] == []
    assert bake.remove_builders(aws_settings) == []  # twice is fine
    assert [p["KeyName"] for p in ec2.describe_key_pairs()["KeyPairs"]] == ["p2bake-operator"]  # not the stack's


def test_the_ami_is_found_by_its_key_and_only_the_newest_two_and_those_in_use_are_kept(aws_settings):
    ec2 = aws.client(aws_settings, "ec2")
    with pytest.raises(StackError, match="no AMI is baked yet for these settings and roles.*python -m flows.bake"):
        bake.hosts_ami(aws_settings)
    assert bake.hosts_ami(aws_settings.model_copy(update={"host_image": "stock"})) == EMULATOR_DEFAULT_AMI

    made = []
    for key in ("aaaaaaaaaaa1", "aaaaaaaaaaa2", "aaaaaaaaaaa3", bake.bake_key(aws_settings)):
        builder = bake.launch_builder(aws_settings, PUBLIC_KEY)
        made.append(bake.create_ami(aws_settings, builder["id"], key))
        bake.remove_builders(aws_settings)
        time.sleep(1.05)  # CreationDate counts seconds: the order is by it
    assert bake.hosts_ami(aws_settings) == made[-1]
    assert bake.find_ami(aws_settings, "aaaaaaaaaaa1")["ImageId"] == made[0]
    image = ec2.describe_images(ImageIds=[made[-1]])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["Project"] == "p2bake" and tags["BakedFrom"] == EMULATOR_DEFAULT_AMI
    snapshots = bake._snapshots(image)
    assert snapshots and all({"Key": bake.BAKE_KEY_TAG, "Value": tags[bake.BAKE_KEY_TAG]} in s["Tags"]
                             for s in ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"])

    amis = bake.project_amis(aws_settings)
    assert [a["ImageId"] for a in amis] == made[::-1]  # newest first
    # A failed CreateImage's AMI is never among those kept, and the next bake of its key
    # removes it (its name would make CreateImage fail as a duplicate).
    failed = {**amis[1], "State": "failed"}
    assert [a["ImageId"] for a in bake.superseded_amis(aws_settings, [amis[0], failed, *amis[2:]], set())] == \
        [made[2], made[0]]
    old = bake.superseded_amis(aws_settings, amis, in_use={made[0]})
    assert [a["ImageId"] for a in old] == [made[1]]  # made[0] runs on a host: kept
    first_snapshots = bake._snapshots(old[0])
    assert bake.deregister(aws_settings, old) == [made[1]]
    assert bake.find_ami(aws_settings, "aaaaaaaaaaa2") is None
    assert ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": first_snapshots}])["Snapshots"] == []
    assert [a["ImageId"] for a in bake.project_amis(aws_settings)] == [made[3], made[2], made[0]]


def test_in_a_subnet_of_its_own_the_builder_and_its_group_go_into_that_subnets_vpc(aws_settings):
    """An account without a default VPC (STACK_SUBNET_ID): the builder goes into the given
    subnet, its group into that subnet's VPC, with a public IP to reach it by SSH."""
    ec2 = aws.client(aws_settings, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
    settings = aws_settings.model_copy(update={"subnet_id": subnet, "availability_zone": "us-east-1b"})
    builder = bake.launch_builder(settings, PUBLIC_KEY)
    inst = ec2.describe_instances(InstanceIds=[builder["id"]])["Reservations"][0]["Instances"][0]
    assert inst["SubnetId"] == subnet and inst["Placement"]["AvailabilityZone"] == "us-east-1b"
    groups = [g["GroupId"] for g in inst["NetworkInterfaces"][0]["Groups"]]
    assert [g["VpcId"] for g in ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"]] == [vpc]
    bake.remove_builders(settings)
