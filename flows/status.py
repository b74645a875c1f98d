"""What the stack looks like now. ``python -m flows.status --json`` prints a JSON object
with ``target``, ``emulator_endpoint``, ``bucket`` and ``instances``; without ``--json``
a short table."""

from __future__ import annotations

import argparse
import json

from stack import aws, platform
from stack.localcloud import emulator
from stack.localcloud import hosts as host_containers
from stack.localcloud.hosts import LABEL_INSTANCE
from stack.localcloud.images import docker_client
from stack.settings import StackSettings


def collect(settings: StackSettings) -> dict:
    report: dict = {
        "target": settings.target,
        "region": settings.region,
        "emulator_endpoint": settings.emulator_endpoint,
        "bucket": settings.effective_bucket_name,
        "instances": [],
        "platform_api_url": None,
        "platform_auth_file": str(platform.auth_file(settings)) if platform.auth_file(settings).exists() else None,
    }
    if settings.target == "local":
        st = emulator.status(settings)
        report["emulator_state"] = st.state
        if st.state != "running":
            return report
    report["instances"] = aws.project_instances(settings)
    if any(i["role"] == "server" for i in report["instances"]):
        report["platform_api_url"] = platform.operator_api_url(settings)
    if settings.target == "local":
        containers = host_containers.project_hosts(docker_client(), settings)
        by_instance = {c.labels.get(LABEL_INSTANCE): c for c in containers.values()}
        for inst in report["instances"]:
            c = by_instance.get(inst["id"])
            inst["host"] = c.name if c is not None else None
            inst["host_state"] = c.status if c is not None else "absent"
    else:
        for inst in report["instances"]:
            inst["host"] = inst["name"]
    return report


def print_table(report: dict) -> None:
    print(f"target {report['target']}  region {report['region']}  bucket {report['bucket']}")
    if report.get("emulator_endpoint"):
        print(f"emulated cloud {report['emulator_endpoint']} ({report.get('emulator_state')})")
    if report.get("platform_api_url"):
        print(f"platform API {report['platform_api_url']} (auth string in {report['platform_auth_file']})")
    if not report["instances"]:
        print("no instances")
    for i in report["instances"]:
        print(f"  {i['name']:<20} {i['role']:<8} {i['state']:<10} {i['id']:<22} "
              f"{i['private_ip'] or '-':<16} host {i.get('host') or '-'}")


if __name__ == "__main__":
    from stack.cli import main

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    data = main(collect, control_plane=False)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
