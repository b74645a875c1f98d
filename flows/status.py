"""What the stack looks like now. ``python -m flows.status --json`` prints a JSON object
with ``target``, ``emulator_endpoint``, ``bucket`` and ``instances``; without ``--json``
a short table."""

from __future__ import annotations

import argparse
import json

from stack import aws
from stack.localcloud import emulator
from stack.settings import StackSettings


def collect(settings: StackSettings) -> dict:
    report: dict = {
        "target": settings.target,
        "region": settings.region,
        "emulator_endpoint": settings.emulator_endpoint,
        "bucket": settings.effective_bucket_name,
        "instances": [],
    }
    if settings.target == "local":
        st = emulator.status(settings)
        report["emulator_state"] = st.state
        if st.state != "running":
            return report
    report["instances"] = aws.project_instances(settings)
    return report


def print_table(report: dict) -> None:
    print(f"target {report['target']}  region {report['region']}  bucket {report['bucket']}")
    if report.get("emulator_endpoint"):
        print(f"emulated cloud {report['emulator_endpoint']} ({report.get('emulator_state')})")
    if not report["instances"]:
        print("no instances")
    for i in report["instances"]:
        print(f"  {i['name']:<20} {i['role']:<8} {i['state']:<10} {i['id']:<22} {i['private_ip'] or '-'}")


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
