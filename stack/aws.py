"""boto3 clients for the stack's target: the emulated cloud on local, the usual
credential chain on aws."""

from __future__ import annotations

import boto3

from stack.settings import EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY, StackSettings


def client(settings: StackSettings, service: str):
    if settings.target == "local":
        return boto3.client(
            service, region_name=settings.region, endpoint_url=settings.emulator_endpoint,
            aws_access_key_id=EMULATOR_ACCESS_KEY, aws_secret_access_key=EMULATOR_SECRET_KEY,
        )
    return boto3.client(service, region_name=settings.region)


def project_instances(settings: StackSettings, states=("pending", "running", "stopping", "stopped")) -> list[dict]:
    """The project's EC2 instances (by Project tag) as plain dicts, sorted by name."""
    ec2 = client(settings, "ec2")
    filters = [{"Name": "tag:Project", "Values": [settings.name_prefix]},
               {"Name": "instance-state-name", "Values": list(states)}]
    out = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for res in page["Reservations"]:
            for inst in res["Instances"]:
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                out.append({
                    "id": inst["InstanceId"],
                    "name": tags.get("Name", inst["InstanceId"]),
                    "role": tags.get("Role", ""),
                    "state": inst["State"]["Name"],
                    "private_ip": inst.get("PrivateIpAddress"),
                    "public_ip": inst.get("PublicIpAddress"),
                })
    return sorted(out, key=lambda i: i["name"])


def running_hosts(settings: StackSettings, role: str | None = None) -> list[dict]:
    """The project's running instances (see project_instances), only those of ``role``
    ("server" or "worker") when one is given."""
    return [i for i in project_instances(settings, states=("running",)) if role is None or i["role"] == role]
