"""The baked host image as an AMI, the way teams bake one on aws: a builder instance
started from the stock AMI (STACK_AMI_ID), the roles' install tasks run on it over SSH
(``ansible/bake.yml``, the same tasks configure runs), then EC2 CreateImage. Every
morning's instances then boot with the packages, the Docker engine, PostgreSQL and the
Prefect virtualenv in place: no apt and no PyPI on the bring-up's path.

The AMI is tagged with :func:`bake_key`, a hash of the stock AMI and of every file and
variable the bake reads, so an unchanged bake is found and never redone. Instances that
already run keep the AMI they booted (the compute module ignores a changed ``ami``): a new
bake reaches new instances (the morning after the nightly teardown, a scale-up), and
configure installs the difference on the others, as it does for an upgrade in place. The
last :data:`KEEP_AMIS` AMIs, and any AMI an instance of the stack runs, are kept; older
ones are deregistered with their snapshots.

The builder has a key pair and a security group of its own (SSH from the operator's
CIDR only), made for the bake and deleted with the builder: the compute module's may not
exist yet, since provision needs the AMI first.

On the emulated cloud the same calls go to moto, and the twin (stack/localcloud/hosts.py)
boots the builder as a host container from the stock host image, commits it when the
bake calls CreateImage, and boots instances of that AMI from the committed image.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from stack import aws
from stack.ansible import ANSIBLE_DIR, install_vars
from stack.pins import platform_constraints
from stack.proc import StackError, get_logger
from stack.settings import REPO_ROOT, StackSettings

BAKE_PLAYBOOK = "bake.yml"
BAKE_KEY_TAG = "StackBakeKey"        # on the AMI and its snapshots: what it was baked from
BUILDER_TAG = "StackBakeBuilder"     # on the builder instance, its key pair and group: the stack's prefix
KEEP_AMIS = 2                        # the newest baked AMIs kept (besides any an instance runs)
# Waiting for CreateImage: minutes on aws (a snapshot of the root volume); at once on moto.
IMAGE_WAIT = {"Delay": 15, "MaxAttempts": 120}


def bake_inputs(settings: StackSettings) -> list[Path]:
    """Every file the bake reads: its playbook, the roles' install tasks and defaults
    (with the installed_packages role they include), the platform's pins (constraints.txt,
    or the lock of STACK_PREFECT_VERSION), the Ansible configuration, and the wait for a
    booted host the playbook starts with."""
    files = [ANSIBLE_DIR / BAKE_PLAYBOOK, ANSIBLE_DIR / "ansible.cfg", platform_constraints(settings.prefect_version),
             ANSIBLE_DIR / "roles" / "installed_packages" / "tasks" / "main.yml",
             ANSIBLE_DIR / "tasks" / "host_ready.yml"]
    for role in sorted((ANSIBLE_DIR / "roles").iterdir()):
        files += [f for f in (role / "tasks" / "install.yml", role / "defaults" / "main.yml") if f.exists()]
    return files


def bake_digest(settings: StackSettings, base: str) -> str:
    """12 hex digits of the hash of what a bake on ``base`` (the stock image it starts
    from) reads: its files and the install variables."""
    h = hashlib.sha256(base.encode())
    for f in bake_inputs(settings):
        h.update(str(f.relative_to(REPO_ROOT)).encode() + b"\0" + f.read_bytes())
    # The variables, less the constraints file's absolute path (its content is hashed
    # above): the same bake serves every checkout of the project, wherever it lives.
    variables = {k: v for k, v in install_vars(settings).items() if k != "base_system_constraints_file"}
    h.update(json.dumps(variables, sort_keys=True).encode())
    return h.hexdigest()[:12]


def bake_key(settings: StackSettings) -> str:
    """The key of the AMI bake: the stock AMI and what the bake reads. On the emulated
    cloud the stock AMI boots the stock host image, so that image's tag counts too."""
    base = settings.effective_ami_id
    if settings.target == "local":
        from stack.localcloud.images import image_tag

        base += " " + image_tag("host")
    return bake_digest(settings, base)


def ami_name(settings: StackSettings, key: str) -> str:
    return f"{settings.name_prefix}-host-{key}"


def builder_name(settings: StackSettings) -> str:
    return f"{settings.name_prefix}-bake"


# --- the stack's AMIs --------------------------------------------------------------
def project_amis(settings: StackSettings) -> list[dict]:
    """The AMIs the stack baked (Project tag), newest first."""
    ec2 = aws.client(settings, "ec2")
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:Project",
                                                            "Values": [settings.name_prefix]}])["Images"]
    for image in images:
        image["tags"] = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    return sorted(images, key=lambda i: i.get("CreationDate", ""), reverse=True)


def find_ami(settings: StackSettings, key: str) -> dict | None:
    """The stack's AMI baked with ``key`` (available, or still being made), or None."""
    for image in project_amis(settings):
        if image["tags"].get(BAKE_KEY_TAG) == key and image.get("State") in USABLE:
            return image
    return None


def hosts_ami(settings: StackSettings) -> str:
    """The AMI new instances boot: the baked one for these settings (STACK_HOST_IMAGE=baked
    with STACK_BAKE=ami), else STACK_AMI_ID itself. A baked AMI that does not exist yet
    is an error saying how to make it."""
    if settings.effective_bake != "ami":
        return settings.effective_ami_id
    key = bake_key(settings)
    found = find_ami(settings, key)
    if found is None:
        raise StackError(f"no AMI is baked yet for these settings and roles ({BAKE_KEY_TAG}={key}); "
                         "run python -m flows.bake first (bootstrap runs it), or set STACK_HOST_IMAGE=stock")
    return found["ImageId"]


def wait_available(settings: StackSettings, ami_id: str) -> None:
    aws.client(settings, "ec2").get_waiter("image_available").wait(ImageIds=[ami_id], WaiterConfig=IMAGE_WAIT)


def ami_tags(settings: StackSettings, key: str) -> list[dict]:
    """The tags of a baked AMI and its snapshots (the twin's re-registered ones too)."""
    return [{"Key": "Name", "Value": ami_name(settings, key)}, {"Key": "Project", "Value": settings.name_prefix},
            {"Key": BAKE_KEY_TAG, "Value": key}, {"Key": "BakedFrom", "Value": settings.effective_ami_id}]


def create_ami(settings: StackSettings, instance_id: str, key: str) -> str:
    """CreateImage of the builder, tagged with the bake key (the image and its snapshots);
    returns once the AMI is available. EC2 reboots the builder first (NoReboot false), so
    the snapshot is of a cleanly written file system."""
    ec2 = aws.client(settings, "ec2")
    tags = ami_tags(settings, key)
    ami_id = ec2.create_image(InstanceId=instance_id, Name=ami_name(settings, key), NoReboot=False,
                              Description=f"Prefect platform host of {settings.name_prefix}: ansible/{BAKE_PLAYBOOK} "
                                          f"on {settings.effective_ami_id}",
                              TagSpecifications=[{"ResourceType": "image", "Tags": tags}])["ImageId"]
    wait_available(settings, ami_id)
    # The snapshots too (moto takes no snapshot tags in CreateImage: tagged afterwards).
    snapshots = _snapshots(ec2.describe_images(ImageIds=[ami_id])["Images"][0])
    if snapshots:
        ec2.create_tags(Resources=snapshots, Tags=tags)
    return ami_id


def _snapshots(image: dict) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]


def deregister(settings: StackSettings, images: list[dict]) -> list[str]:
    """Deregister ``images`` (project_amis dicts) and delete their snapshots."""
    ec2 = aws.client(settings, "ec2")
    gone = []
    for image in images:
        ec2.deregister_image(ImageId=image["ImageId"])
        for snapshot in _snapshots(image):
            try:
                ec2.delete_snapshot(SnapshotId=snapshot)
            except ec2.exceptions.ClientError as exc:  # already gone: nothing to delete
                get_logger().info("snapshot %s of %s: %s", snapshot, image["ImageId"], exc)
        gone.append(image["ImageId"])
    return gone


USABLE = ("available", "pending")


def superseded_amis(settings: StackSettings, amis: list[dict], in_use: set[str]) -> list[dict]:
    """The baked AMIs to deregister: all but the newest KEEP_AMIS usable ones and any an
    instance runs (a failed CreateImage's AMI goes too)."""
    keep = {a["ImageId"] for a in [a for a in amis if a.get("State") in USABLE][:KEEP_AMIS]} | in_use
    return [a for a in amis if a["ImageId"] not in keep]


def failed_amis(settings: StackSettings, key: str) -> list[dict]:
    """The stack's AMIs of ``key`` that CreateImage did not make usable (failed): their
    name would make the next CreateImage of that key fail as a duplicate."""
    return [a for a in project_amis(settings) if a["tags"].get(BAKE_KEY_TAG) == key and a.get("State") not in USABLE]


def amis_in_use(settings: StackSettings) -> set[str]:
    return {i["image_id"] for i in aws.project_instances(settings) if i.get("image_id")}


# --- the builder ---------------------------------------------------------------------
def _builder_tags(settings: StackSettings, resource: str) -> list[dict]:
    return [{"ResourceType": resource, "Tags": [{"Key": "Name", "Value": builder_name(settings)},
                                                {"Key": BUILDER_TAG, "Value": settings.name_prefix}]}]


def launch_builder(settings: StackSettings, public_key: str) -> dict:
    """Start the builder instance from the stock AMI, with a key pair and a security group
    of its own (SSH from STACK_OPERATOR_CIDR only); the instance once it is running."""
    ec2 = aws.client(settings, "ec2")
    name = builder_name(settings)
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode(),
                        TagSpecifications=_builder_tags(settings, "key-pair"))
    vpc = {}
    if settings.subnet_id:  # an account without a default VPC: the subnet's VPC
        vpc = {"VpcId": ec2.describe_subnets(SubnetIds=[settings.subnet_id])["Subnets"][0]["VpcId"]}
    group = ec2.create_security_group(GroupName=name, Description="SSH from the operator to the AMI builder",
                                      TagSpecifications=_builder_tags(settings, "security-group"), **vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": settings.effective_operator_cidr, "Description": "SSH from the operator"}]}])
    network = ({"NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": settings.subnet_id, "Groups": [group],
                                       "AssociatePublicIpAddress": True}]}
               if settings.subnet_id else {"SecurityGroupIds": [group]})
    placement = {"Placement": {"AvailabilityZone": settings.availability_zone}} if settings.availability_zone else {}
    launched = ec2.run_instances(
        ImageId=settings.effective_ami_id, InstanceType=settings.instance_type, MinCount=1, MaxCount=1,
        KeyName=name, MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
        TagSpecifications=_builder_tags(settings, "instance"), **network, **placement)
    instance_id = launched["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id])
    return builder_instance(settings, instance_id)


def builder_instance(settings: StackSettings, instance_id: str) -> dict:
    """The builder as stack/aws.py describes instances (name, address, port)."""
    inst = aws.client(settings, "ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {**aws.instance_dict(inst), "role": "bake"}


def remove_builders(settings: StackSettings, group_wait: float = 180) -> list[str]:
    """Terminate the stack's builder instances (this bake's, or one an interrupted bake
    left) and delete their key pair and security group once they are gone."""
    ec2 = aws.client(settings, "ec2")
    mine = [{"Name": f"tag:{BUILDER_TAG}", "Values": [settings.name_prefix]}]
    found = [i["InstanceId"] for r in ec2.describe_instances(Filters=mine + [
        {"Name": "instance-state-name", "Values": ["pending", "running", "shutting-down", "stopping", "stopped"]}])[
        "Reservations"] for i in r["Instances"]]
    if found:
        ec2.terminate_instances(InstanceIds=found)
        # A security group in use by an instance cannot be deleted.
        ec2.get_waiter("instance_terminated").wait(InstanceIds=found)
    for group in ec2.describe_security_groups(Filters=mine)["SecurityGroups"]:
        _delete_group(ec2, group["GroupId"], group_wait)
    for pair in ec2.describe_key_pairs(Filters=mine)["KeyPairs"]:
        ec2.delete_key_pair(KeyName=pair["KeyName"])
    return found


def _delete_group(ec2, group_id: str, wait: float) -> None:
    """EC2 may hold a terminated instance's network interface, and so its group, for a
    while after it reports it terminated (DependencyViolation): try again until ``wait``."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + wait
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "DependencyViolation" or time.monotonic() > deadline:
                raise
            time.sleep(10)


def builder_inventory(settings: StackSettings, builder: dict, path: Path) -> Path:
    """A one-host inventory of the builder; group_vars/all.yml adds the SSH user, key and
    options, as for the stack's hosts."""
    path.write_text(json.dumps({"all": {"hosts": {builder["name"]: {
        "ansible_host": builder["ssh_host"], "ansible_port": builder["ssh_port"], "instance_id": builder["id"],
    }}}}))
    return path
