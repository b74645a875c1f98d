"""The branches only STACK_TARGET=aws takes, run here so that none is left to the first real
account (tests/aws_coverage.py lists what no test runs). AWS calls go to moto's in-process
implementation of the API (a real implementation, no server); what needs a real account
(IAM enforcement, TLS on the wire, the instance role) is listed in docs/aws.md."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from stack import checks, cloudstate, statebackend, steps, terraform
from stack.localcloud import emulator
from stack.localcloud.flow_runner import (FlowRunnerImage, flow_runner_identity, flow_runner_image, official_image,
                                         publish, repository_url)
from stack.pins import pinned_prefect
from stack.proc import StackError
from stack.settings import StackSettings


@pytest.fixture
def aws_settings(tmp_path, monkeypatch) -> StackSettings:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    return StackSettings(target="aws", region="eu-west-1", operator_cidr="203.0.113.0/24",
                         ami_id="ami-0123456789abcdef0", state_dir=tmp_path, name_prefix="p2aws")


def test_on_aws_the_stacks_image_is_built_on_a_worker_host_and_named_by_its_repository(aws_settings):
    from stack.localcloud.flow_runner import builds_on_host, host_build_base, host_build_tag, published_image

    url = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/p2aws/flow-runner"
    tag = host_build_tag(aws_settings)
    assert builds_on_host(aws_settings) and flow_runner_identity(aws_settings) == {"content": tag, "built_on": "host"}
    assert published_image(aws_settings, url) == FlowRunnerImage(f"{url}:{tag}")  # nothing installed at start
    assert host_build_base(aws_settings, url) == "debian:bookworm-slim"
    with pytest.raises(StackError, match="built on a worker host, not here"):
        flow_runner_image(aws_settings)  # no Docker engine on the operator's machine
    # The same inputs give the same tag on the twin, whose registry stands in for Docker Hub.
    local = aws_settings.model_copy(update={"target": "local", "flow_runner_build": "host"})
    assert host_build_tag(local) == tag and builds_on_host(local)
    assert host_build_base(local, url) == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/library/debian:bookworm-slim"
    assert host_build_tag(aws_settings.model_copy(update={"prefect_version": "3.8.8"})) != tag
    # A team's own image is used as it is: nothing is built.
    own = aws_settings.model_copy(update={"flow_runner_image": f"{url}:ours"})
    assert not builds_on_host(own) and flow_runner_identity(own) == {"reference": f"{url}:ours"}
    assert publish(own, flow_runner_image(own), url).reference == f"{url}:ours"


def test_on_aws_an_operator_build_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="flow_runner_build: on aws the stack builds the flow-runner image on a "
                                         "worker host"):
        StackSettings(target="aws", region="eu-west-1", operator_cidr="203.0.113.0/24", state_dir=tmp_path,
                      ami_id="ami-0123456789abcdef0", name_prefix="p2aws", flow_runner_build="operator")


def test_the_push_logs_in_with_the_operators_ecr_token_and_looks_for_the_tag_in_ecr(aws_settings):
    from stack.localcloud.flow_runner import in_repository, registry_login

    with mock_aws():
        ecr = boto3.client("ecr", region_name="eu-west-1")
        url = ecr.create_repository(repositoryName="p2aws/flow-runner")["repository"]["repositoryUri"]
        user, password = registry_login(aws_settings)
        assert user == "AWS" and password
        assert in_repository(aws_settings, url, "host-0123456789ab") is False
        # Configure's probe too: an image expired by ECR's lifecycle policy makes configure
        # run (and build it again); a team's own image is not the stack's to check.
        assert steps.flow_runner_image_present(aws_settings, f"{url}:host-0123456789ab") is False
        own = aws_settings.model_copy(update={"flow_runner_image": f"{url}:ours"})
        assert steps.flow_runner_image_present(own, f"{url}:ours") is True
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {}, "layers": []}
        ecr.put_image(repositoryName="p2aws/flow-runner", imageManifest=json.dumps(manifest),
                      imageTag="host-0123456789ab")
        assert in_repository(aws_settings, url, "host-0123456789ab") is True
        assert steps.flow_runner_image_present(aws_settings, f"{url}:host-0123456789ab") is True


def test_on_aws_worker_hosts_pull_from_the_stacks_ecr_registry_with_the_credential_helper(aws_settings):
    from flows.configure import image_vars

    with mock_aws():
        with pytest.raises(StackError, match=r"repository p2aws/flow-runner does not exist in ECR: python -m "
                                             r"flows.provision makes it"):
            repository_url(aws_settings)
        ecr = boto3.client("ecr", region_name="eu-west-1")
        ecr.create_repository(repositoryName="p2aws/flow-runner", imageTagMutability="IMMUTABLE")
        url = repository_url(aws_settings)
    assert url.endswith(".dkr.ecr.eu-west-1.amazonaws.com/p2aws/flow-runner")
    own = FlowRunnerImage.of(f"{url}:1", aws_settings)  # pushed there by the team
    got = image_vars(aws_settings, own, url)
    assert got == {"prefect_worker_flow_runner_image": f"{url}:1", "prefect_worker_flow_runner_image_required": True,
                   "docker_ecr_registry": url.split("/")[0], "docker_stack_ca_registry": ""}
    # Docker Hub's official image: a failed pull (rate limits) is left to the first run's.
    official = image_vars(aws_settings, FlowRunnerImage.of(official_image(aws_settings), aws_settings), url)
    assert official["prefect_worker_flow_runner_image_required"] is False
    local = aws_settings.model_copy(update={"target": "local"})
    assert image_vars(local, own, url)["docker_stack_ca_registry"] == url.split("/")[0]
    assert image_vars(local, own, url)["docker_ecr_registry"] == ""


def test_on_aws_the_official_image_and_its_extra_packages_follow_the_platforms_prefect(aws_settings):
    settings = aws_settings.model_copy(update={"prefect_version": "3.8.8"})
    image = FlowRunnerImage.of(official_image(settings), settings)
    assert image.reference == "prefecthq/prefect:3.8.8-python3.12"
    # prefect-aws of 3.8.8's lock, not of constraints.txt
    lock = (steps.REPO_ROOT / "locks" / "prefect-3.8.8.txt").read_text()
    aws_pin = image.extra_pip_packages.split()[0]
    assert aws_pin in lock.splitlines()


def test_on_aws_the_ami_says_what_hosts_boot_and_no_emulator_override_is_left(aws_settings):
    assert terraform.host_image_version(aws_settings) == ""
    terraform.ssh_public_key(aws_settings, create=True)  # provision makes it before Terraform runs
    tf = terraform.Terraform(aws_settings, terraform.COMPUTE)
    tf.workdir.mkdir(parents=True)
    (tf.workdir / terraform.OVERRIDE_FILE).write_text("# from a local run\n")
    tf.prepare()
    assert not (tf.workdir / terraform.OVERRIDE_FILE).exists()
    variables = json.loads((tf.workdir / "terraform.tfvars.json").read_text())
    assert variables["ami_id"] == "ami-0123456789abcdef0" and variables["operator_cidr"] == "203.0.113.0/24"


def test_on_aws_there_is_no_emulator_to_start_lose_or_check(aws_settings):
    with pytest.raises(StackError, match="only for STACK_TARGET=local"):
        emulator.up(aws_settings)
    cloudstate.record(aws_settings)
    assert not cloudstate.emulator_lost_state(aws_settings)
    assert not (aws_settings.state_path / "terraform" / "emulator-session").exists()
    assert steps.hosts_probe(aws_settings, None) is True
    assert checks.docker_engine(aws_settings) is None  # no Docker engine needed on aws
    assert checks.ports(aws_settings) is None  # only the control plane's port is on this machine


def test_on_aws_status_names_each_host_by_its_instance(aws_settings):
    import boto3

    from flows.status import collect

    with mock_aws():
        ec2 = boto3.client("ec2", region_name="eu-west-1")
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "Name", "Value": "p2aws-ec2-1"}, {"Key": "Role", "Value": "worker"}, {"Key": "Project", "Value": "p2aws"}]}])
        report = collect(aws_settings)
    assert [(i["name"], i["host"], i["role"]) for i in report["instances"]] == [("p2aws-ec2-1", "p2aws-ec2-1", "worker")]
    assert report["emulator_endpoint"] is None and report["versions"] is None  # no server host yet


def test_on_aws_the_state_bucket_is_tls_only(aws_settings):
    with mock_aws():
        name = statebackend.ensure_state_bucket(aws_settings)
        import boto3

        policy = json.loads(boto3.client("s3", region_name="eu-west-1").get_bucket_policy(Bucket=name)["Policy"])
    deny = policy["Statement"][0]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(deny["Resource"]) == {f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"}


def test_on_aws_configure_knows_a_host_by_its_instance_id():
    from flows.configure import host_identities

    settings = StackSettings(target="aws", operator_cidr="203.0.113.0/24", ami_id="ami-0123456789abcdef0")
    running = [{"name": "prefect2-ec2-0", "id": "i-0a"}, {"name": "prefect2-ec2-1", "id": "i-0b"}]
    assert host_identities(settings, running) == {"prefect2-ec2-0": "i-0a", "prefect2-ec2-1": "i-0b"}


def test_on_aws_the_hosts_reach_the_api_through_the_internal_balancer_and_the_operator_the_public_one(
        aws_settings, monkeypatch):
    from flows.configure import multi_server_vars
    from stack import platform

    multi = aws_settings.model_copy(update={"server_count": 2})
    internal = "p2aws-api-in-0123456789abcdef.elb.eu-west-1.amazonaws.com"
    outputs = {"internal_load_balancer": {"value": {"name": "p2aws-api-in", "dns_name": internal}},
               "redis_address": {"value": "master.p2aws-redis.abc123.euw1.cache.amazonaws.com"}}
    monkeypatch.setattr(statebackend, "read_state",
                        lambda settings, root: {"outputs": outputs} if root == terraform.COMPUTE else None)
    with mock_aws():
        subnet = boto3.client("ec2", region_name="eu-west-1").describe_subnets()["Subnets"][0]["SubnetId"]
        public = boto3.client("elbv2", region_name="eu-west-1").create_load_balancer(
            Name="p2aws-api", Type="network", Subnets=[subnet])["LoadBalancers"][0]["DNSName"]
        assert platform.api_address(multi) == internal != public
        assert multi_server_vars(multi)["stack_api_address"] == internal  # the workers' URL
        assert platform.operator_api_url(multi) == f"https://{public}:4200/api"
        # Every API host's certificate names both: the hosts' clients and the operator verify it.
        assert {internal, public} <= set(platform.server_tls_names(multi))
        # Before provision made the internal balancer: no address (the hosts use the server host).
        outputs.pop("internal_load_balancer")
        assert platform.api_address(multi) is None and internal not in platform.server_tls_names(multi)
