"""boto3 clients for the stack's target: the emulated cloud on local, the usual
credential chain on aws."""

from __future__ import annotations

import socket

import boto3

from stack.proc import StackError
from stack.settings import EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY, StackSettings


# Tags the hosts step (local target only) writes on an instance: where its host
# container's sshd is published. Terraform ignores them (the local provider override's
# ignore_tags); the Ansible inventory and stack/hostexec.py read them.
SSH_HOST_TAG = "StackSshHost"
SSH_PORT_TAG = "StackSshPort"
# When the hosts step recorded an instance as stopped because its host powered itself off
# (local only; see stack/localcloud/hosts.record_self_stopped). Terraform ignores it too.
SELF_STOP_TAG = "StackSelfStopped"


def client(settings: StackSettings, service: str):
    if settings.target == "local":
        return boto3.client(
            service, region_name=settings.region, endpoint_url=settings.emulator_endpoint,
            aws_access_key_id=EMULATOR_ACCESS_KEY, aws_secret_access_key=EMULATOR_SECRET_KEY,
        )
    return boto3.client(service, region_name=settings.region)


def emulator_listening(settings: StackSettings) -> bool:
    """Whether the emulated cloud's port accepts a connection (local). One that is not
    running refuses at once, where the AWS SDK would retry the refusal for about 11 s
    before a command learns what one look tells."""
    try:
        socket.create_connection(("127.0.0.1", settings.emulator_port), timeout=2).close()
        return True
    except OSError:
        return False


def project_instances(settings: StackSettings, states=("pending", "running", "stopping", "stopped")) -> list[dict]:
    """The project's EC2 instances (by Project tag) as plain dicts, sorted by name."""
    ec2 = client(settings, "ec2")
    filters = [{"Name": "tag:Project", "Values": [settings.name_prefix]},
               {"Name": "instance-state-name", "Values": list(states)}]
    out = [instance_dict(inst) for page in ec2.get_paginator("describe_instances").paginate(Filters=filters)
           for res in page["Reservations"] for inst in res["Instances"]]
    return sorted(out, key=lambda i: i["name"])


def instance_dict(inst: dict) -> dict:
    """One instance of DescribeInstances as the stack reads it (its tags, where SSH reaches it)."""
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    return {
        "id": inst["InstanceId"],
        "name": tags.get("Name", inst["InstanceId"]),
        "role": tags.get("Role", ""),
        "state": inst["State"]["Name"],
        "private_ip": inst.get("PrivateIpAddress"),
        "public_ip": inst.get("PublicIpAddress"),
        # Where SSH reaches it: the loopback port the hosts step recorded on the emulated
        # cloud, the public IP on port 22 on aws.
        "ssh_host": tags.get(SSH_HOST_TAG) or inst.get("PublicIpAddress"),
        "ssh_port": int(tags.get(SSH_PORT_TAG) or 22),
        "key_name": inst.get("KeyName"),
        "image_id": inst.get("ImageId"),
        "state_reason": inst.get("StateTransitionReason") or "",
        # Powered off from inside (the safety stop): EC2 says so on aws; on local the
        # twin's tag when it recorded the stop.
        "stopped_by_itself": inst["State"]["Name"] in ("stopping", "stopped") and (
            inst.get("StateReason", {}).get("Code") == "Client.InstanceInitiatedShutdown"
            or SELF_STOP_TAG in tags),
    }


def record_ssh_endpoints(settings: StackSettings, ports: dict[str, int], address: str = "127.0.0.1") -> None:
    """Tag each instance (id -> port) with the address and port its sshd is reached at."""
    ec2 = client(settings, "ec2")
    for instance_id, port in sorted(ports.items()):
        ec2.create_tags(Resources=[instance_id], Tags=[{"Key": SSH_HOST_TAG, "Value": address},
                                                       {"Key": SSH_PORT_TAG, "Value": str(port)}])


def launch_data(settings: StackSettings, instance: dict) -> tuple[str, list[str]]:
    """What EC2 gives ``instance`` (a project_instances dict) at boot: its user_data and
    its key pair's public key."""
    import base64

    ec2 = client(settings, "ec2")
    attr = ec2.describe_instance_attribute(InstanceId=instance["id"], Attribute="userData")
    encoded = (attr.get("UserData") or {}).get("Value") or ""
    user_data = base64.b64decode(encoded).decode() if encoded else ""
    keys = []
    if instance.get("key_name"):
        pairs = ec2.describe_key_pairs(KeyNames=[instance["key_name"]], IncludePublicKey=True)["KeyPairs"]
        keys = [p["PublicKey"].strip() for p in pairs if p.get("PublicKey")]
    return user_data, keys


def running_hosts(settings: StackSettings, role: str | None = None) -> list[dict]:
    """The project's running instances (see project_instances), only those of ``role``
    ("server" or "worker") when one is given."""
    return [i for i in project_instances(settings, states=("running",)) if role is None or i["role"] == role]


# What STS says when the credentials cannot be used any more (or never could).
EXPIRED = ("ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId",
           "UnrecognizedClientException", "InvalidToken")


def check_credentials(settings: StackSettings, what: str) -> None:
    """Before ``what`` changes anything on aws: the credential chain resolves now, to
    keys that work. One line saying what to do otherwise."""
    if settings.target == "local":
        return
    import botocore.exceptions

    fix = ("refresh them (aws sso login, or a new session for AWS_PROFILE) and run it again; "
           "on the control plane, the next scheduled run picks them up")
    try:
        client(settings, "sts").get_caller_identity()
    except botocore.exceptions.NoCredentialsError:
        raise StackError(f"{what}: no AWS credentials found; {fix}") from None
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in EXPIRED:
            raise StackError(f"{what}: the AWS credentials have expired ({code}); {fix}") from None
        raise


class SettingRefused(StackError):
    """A setting that the account contradicts, found before anything is made."""
    exit_code = 2


def check_placement(settings: StackSettings) -> str:
    """Where the hosts go, checked before anything is made: the subnet of STACK_SUBNET_ID
    (it exists, in the data volume's availability zone), else the region's default VPC.
    Returns a line saying which."""
    ec2 = client(settings, "ec2")
    zone = settings.effective_availability_zone
    if settings.subnet_id:
        try:
            subnet = ec2.describe_subnets(SubnetIds=[settings.subnet_id])["Subnets"][0]
        except Exception:  # InvalidSubnetID.NotFound, or no right to look
            raise SettingRefused(f"setting STACK_SUBNET_ID: no subnet {settings.subnet_id} in region {settings.region} "
                             "(or no right to describe it); name a subnet of this region") from None
        if subnet["AvailabilityZone"] != zone:
            raise SettingRefused(f"setting STACK_SUBNET_ID: subnet {settings.subnet_id} is in {subnet['AvailabilityZone']}, "
                             f"the data volume's availability zone is {zone}; set "
                             f"STACK_AVAILABILITY_ZONE={subnet['AvailabilityZone']} (or choose a subnet in {zone})")
        return f"subnet {settings.subnet_id} of {subnet['VpcId']} in {zone}"
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise SettingRefused(f"region {settings.region} has no default VPC for the hosts; set STACK_SUBNET_ID to a "
                         f"subnet in {zone} with a route to the internet")
    return f"the default VPC {vpcs[0]['VpcId']} in {zone}"


# Where the operator's public address is asked (aws target): the service AWS's own
# console uses. Answered in plain text.
CHECKIP_URL = "https://checkip.amazonaws.com"


def operator_address() -> str | None:
    """This machine's public IPv4 address as the internet sees it; None when unknown."""
    import ipaddress
    import urllib.request

    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=5) as answer:  # noqa: S310 (a constant https URL)
            return str(ipaddress.IPv4Address(answer.read().decode().strip()))
    except Exception:  # offline, blocked, or a proxy's page: the check is then skipped
        return None


def check_operator_address(settings: StackSettings, address: str | None) -> str:
    """On aws, the operator's public address must be inside STACK_OPERATOR_CIDR, or SSH
    and the platform's API refuse this machine after minutes of provisioning."""
    import ipaddress

    if settings.target != "aws":
        return "local target: the hosts are on this machine"
    if address is None:
        return f"could not learn this machine's public address ({CHECKIP_URL}); not checked against STACK_OPERATOR_CIDR"
    if ipaddress.ip_address(address) not in ipaddress.ip_network(settings.effective_operator_cidr, strict=False):
        raise SettingRefused(f"setting STACK_OPERATOR_CIDR: this machine's public address {address} is not in "
                         f"{settings.effective_operator_cidr}, so SSH and the platform's API would refuse it; set "
                         f"STACK_OPERATOR_CIDR={address}/32")
    return f"this machine ({address}) is inside STACK_OPERATOR_CIDR {settings.effective_operator_cidr}"


def start_stopped_instances(settings: StackSettings) -> list[str]:
    """Start the project's stopped instances (a host's safety stop, or someone's
    StopInstances): the same instances, their disks kept; on aws each gets a new public IP,
    which provision's outputs and the inventory then carry. Returns their names."""
    stopped = project_instances(settings, states=("stopping", "stopped"))
    if not stopped:
        return []
    ec2 = client(settings, "ec2")
    ids = [i["id"] for i in stopped]
    fast = {"Delay": 2 if settings.target == "local" else 5, "MaxAttempts": 120}
    ec2.get_waiter("instance_stopped").wait(InstanceIds=ids, WaiterConfig=fast)  # a stopping one cannot start yet
    ec2.start_instances(InstanceIds=ids)
    ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=fast)
    return [i["name"] for i in stopped]
