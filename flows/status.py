"""What the stack looks like now. ``python -m flows.status --json`` prints a JSON object
with ``target``, ``emulator_endpoint``, ``bucket``, ``instances``, ``data_volume`` (id,
name, size), ``flow_runner_repository`` (its URL), ``last_backup`` (time, size, location), ``control_plane_api_url`` and
``next_teardown``, ``compute_stopped`` (hosts, when and why, or null), ``versions`` (the Prefect of the platform's server and of each
host); without ``--json`` a short table."""

from __future__ import annotations

import json

import datetime as dt

from stack import aws, backups, platform, statebackend, tls
from stack.localcloud import emulator
from stack.localcloud import hosts as host_containers
from stack.localcloud.hosts import LABEL_INSTANCE
from stack.localcloud.images import docker_client
from stack.proc import StackError
from stack.settings import StackSettings


def collect(settings: StackSettings) -> dict:
    report: dict = {
        "target": settings.target,
        "region": settings.region,
        "emulator_endpoint": settings.emulator_endpoint,
        "bucket": settings.bucket_name,
        "instances": [],
        "platform_api_url": None,
        "platform_auth_file": str(platform.auth_file(settings)) if platform.auth_file(settings).exists() else None,
    }
    report["control_plane_api_url"] = settings.control_plane_api_url
    report["steps"] = last_step_states(settings)
    report["next_teardown"] = next_time(settings.nightly_teardown_cron, settings.schedule_timezone)
    report["next_backup"] = next_time(settings.backup_cron, settings.schedule_timezone)
    cloud_up = _cloud_answers(settings)
    if cloud_up:
        report["bucket"] = statebackend.code_bucket_name_or_none(settings)
    found = backups.available(settings, report["bucket"] if cloud_up else None)
    report["last_backup"] = found[-1].as_dict() if found else None
    report["data_volume"] = None
    if settings.target == "local":
        st = emulator.status(settings)
        report["emulator_state"] = st.state
        if st.state != "running":
            return report
    report["data_volume"] = data_volume(settings)
    report["flow_runner_repository"] = flow_runner_repository(settings)
    if settings.target == "local":
        host_containers.record_self_stopped(settings)  # what EC2 would already show
    report["instances"] = aws.project_instances(settings)
    report["compute_stopped"] = compute_stopped(report["instances"], found)
    report["versions"] = None
    # A stopped server has no address on aws (its public IP went with the stop).
    if any(i["role"] == "server" and i["state"] == "running" for i in report["instances"]):
        report["platform_api_url"] = platform.operator_api_url(settings)
        # Clients verify the platform's TLS certificate with the stack's CA.
        report["platform_ca_file"] = str(tls.ca_file(settings))
        running = [i for i in report["instances"] if i["state"] == "running"]
        if tls.ca_file(settings).exists() and platform.auth_file(settings).exists():
            hosts, unanswered = platform.host_versions(settings, running)
            report["versions"] = {"server": platform.server_version(settings, report["platform_api_url"]),
                                  "hosts": hosts, "unanswered": unanswered}
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


def compute_stopped(instances: list[dict], found: list[backups.Backup]) -> dict | None:
    """When and why the compute is stopped (None: no instance is): {hosts, at, why}."""
    stopped = [i["name"] for i in instances if i["state"] in ("stopping", "stopped")]
    if not stopped:
        return None
    if all(i.get("stopped_by_itself") for i in instances if i["name"] in stopped):
        final = [b for b in found if backups.taken_by_safety_stop(b.name)]
        return {"hosts": stopped, "at": final[-1].created_at.isoformat() if final else None,
                "why": "stopped by the hosts' own timer (STACK_SAFETY_STOP): the nightly teardown did not run; "
                       + (f"the server's final backup is {final[-1].name}. " if final else "")
                       + "The next bootstrap starts them again"}
    reasons = sorted({i.get("state_reason") or "" for i in instances if i["name"] in stopped} - {""})
    return {"hosts": stopped, "at": None,
            "why": f"stopped ({'; '.join(reasons) or 'no reason given'}); the next bootstrap starts them again"}


def last_step_states(settings: StackSettings) -> dict:
    """Each bootstrap step's last outcome: state (completed, skipped, failed), when, how long."""
    path = settings.state_path / "steps.json"  # written by flows/bootstrap.py
    known = json.loads(path.read_text()) if path.exists() else {}
    states = {"ran": "completed", "skipped": "skipped", "failed": "failed"}
    return {step: {"state": states.get(o["outcome"], o["outcome"]), "finished_at": o["finished_at"],
                   "duration_s": o["seconds"]} for step, o in known.items()}


def _cloud_answers(settings: StackSettings) -> bool:
    return settings.target != "local" or emulator.status(settings).state == "running"


def next_time(cron: str, timezone: str) -> str | None:
    """When a cron schedule fires next, as an ISO time (None for no schedule)."""
    if not cron:
        return None
    from zoneinfo import ZoneInfo

    from cronsim import CronSim  # what Prefect's own cron schedules are evaluated with

    return next(CronSim(cron, dt.datetime.now(ZoneInfo(timezone)))).isoformat()


def flow_runner_repository(settings: StackSettings) -> str | None:
    """The URL of the flow-runner image's ECR repository; None before provision made it."""
    from stack.localcloud.flow_runner import repository_url

    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return repository_url(settings)
    except (StackError, BotoCoreError, ClientError):  # e.g. a policy without ecr:DescribeRepositories
        return None


def data_volume(settings: StackSettings) -> dict | None:
    """The platform database's EBS volume (found by its Name tag), and on local whether
    the named Docker volume that stands in for it exists."""
    vols = aws.client(settings, "ec2").describe_volumes(
        Filters=[{"Name": "tag:Name", "Values": [settings.data_volume_name]}])["Volumes"]
    if not vols:
        return None
    v = vols[0]
    out = {"id": v["VolumeId"], "name": settings.data_volume_name, "size": v["Size"], "state": v["State"],
           "availability_zone": v["AvailabilityZone"]}
    if settings.target == "local":
        import docker.errors

        try:
            docker_client().volumes.get(settings.data_volume_name)
            out["docker_volume"] = settings.data_volume_name
        except docker.errors.NotFound:
            out["docker_volume"] = None
    return out


def print_table(report: dict) -> None:
    print(f"target {report['target']}  region {report['region']}  bucket {report['bucket']}")
    if report.get("emulator_endpoint"):
        print(f"emulated cloud {report['emulator_endpoint']} ({report.get('emulator_state')})")
    if report.get("platform_api_url"):
        print(f"platform API {report['platform_api_url']} (auth string in {report['platform_auth_file']}, "
              f"CA certificate {report['platform_ca_file']})")
    if report.get("data_volume"):
        v = report["data_volume"]
        print(f"data volume {v['name']} {v['id']} {v['size']} GiB ({v['state']})")
    if report.get("flow_runner_repository"):
        print(f"flow-runner image repository {report['flow_runner_repository']}")
    if report.get("last_backup"):
        b = report["last_backup"]
        print(f"last backup {b['time']} {b['size']} bytes at {b['location']}")
    if report.get("versions"):
        v = report["versions"]
        hosts = ", ".join(f"{h} {ver or '?'}" for h, ver in v["hosts"].items())
        print(f"Prefect: server {v['server'] or '? (no answer)'}; hosts {hosts}")
        for host, why in v["unanswered"].items():
            print(f"  {host}: no version: {why}")
    print(f"control plane {report['control_plane_api_url']}; next teardown {report['next_teardown'] or 'none'}, "
          f"next backup {report['next_backup'] or 'none'}")
    if report.get("compute_stopped"):
        c = report["compute_stopped"]
        print(f"compute stopped{' at ' + c['at'] if c['at'] else ''}: {', '.join(c['hosts'])}: {c['why']}")
    if report.get("steps"):
        print("steps: " + ", ".join(f"{k} {v['state']}" for k, v in report["steps"].items()))
    if not report["instances"]:
        print("no instances")
    for i in report["instances"]:
        print(f"  {i['name']:<20} {i['role']:<8} {i['state']:<10} {i['id']:<22} "
              f"{i['private_ip'] or '-':<16} host {i.get('host') or '-'}")


if __name__ == "__main__":
    from stack.cli import main, step_parser

    parser = step_parser("flows.status", __doc__)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    data = main(collect, control_plane=False)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
