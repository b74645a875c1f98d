"""Preflight's checks of where the hosts go and who may reach them (stack/aws.py), against
moto's in-process EC2 (a real implementation of the API, no server): the subnet of
STACK_SUBNET_ID, the default VPC, the operator's address inside STACK_OPERATOR_CIDR."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from stack import aws
from stack.settings import StackSettings


def aws_settings(tmp_path, **extra) -> StackSettings:
    return StackSettings(target="aws", region="eu-west-1", operator_cidr="203.0.113.0/24",
                         ami_id="ami-0123456789abcdef0", state_dir=tmp_path, **extra)


@pytest.fixture
def ec2(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.client("ec2", region_name="eu-west-1")


def test_a_subnet_in_the_data_volumes_zone_is_where_the_hosts_go(ec2, tmp_path):
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="eu-west-1a")["Subnet"]["SubnetId"]
    assert aws.check_placement(aws_settings(tmp_path, subnet_id=subnet)) == f"subnet {subnet} of {vpc} in eu-west-1a"


def test_a_subnet_in_another_zone_is_refused_naming_the_zone_to_set(ec2, tmp_path):
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="eu-west-1b")["Subnet"]["SubnetId"]
    with pytest.raises(aws.SettingRefused, match="STACK_AVAILABILITY_ZONE=eu-west-1b") as refused:
        aws.check_placement(aws_settings(tmp_path, subnet_id=subnet))
    assert refused.value.exit_code == 2


def test_an_unknown_subnet_is_refused_naming_the_setting(ec2, tmp_path):
    with pytest.raises(aws.SettingRefused, match="STACK_SUBNET_ID: no subnet subnet-0123456789abcdef0 in region eu-west-1"):
        aws.check_placement(aws_settings(tmp_path, subnet_id="subnet-0123456789abcdef0"))


def test_without_a_subnet_the_default_vpc_is_used_and_its_absence_said(ec2, tmp_path):
    default = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    assert aws.check_placement(aws_settings(tmp_path)) == f"the default VPC {default} in eu-west-1a"
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [default]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    ec2.delete_vpc(VpcId=default)
    with pytest.raises(aws.SettingRefused, match="no default VPC for the hosts; set STACK_SUBNET_ID"):
        aws.check_placement(aws_settings(tmp_path))


@pytest.mark.parametrize("address, outcome", [
    ("203.0.113.7", "inside STACK_OPERATOR_CIDR 203.0.113.0/24"),
    (None, "not checked against STACK_OPERATOR_CIDR"),
])
def test_the_operators_address_inside_the_cidr_or_unknown_passes(tmp_path, address, outcome):
    assert outcome in aws.check_operator_address(aws_settings(tmp_path), address)


def test_an_operator_outside_the_cidr_is_refused_with_the_cidr_to_set(tmp_path):
    with pytest.raises(aws.SettingRefused, match="198.51.100.9 is not in 203.0.113.0/24.*STACK_OPERATOR_CIDR=198.51.100.9/32"):
        aws.check_operator_address(aws_settings(tmp_path), "198.51.100.9")


def test_a_subnet_id_of_another_shape_is_refused_by_the_settings(tmp_path):
    with pytest.raises(ValueError, match="subnet_id"):
        aws_settings(tmp_path, subnet_id="my-subnet")
