"""Step 3, hosts (local target only): one systemd container per running instance."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from stack import aws
from stack.localcloud import hosts as host_containers
from stack.settings import StackSettings, load_settings


class HostsReport(BaseModel):
    hosts: dict[str, str]          # instance id -> host container name
    created: list[str]
    removed: list[str]
    unchanged: list[str]


@flow(name="hosts")
def hosts(settings: StackSettings | None = None) -> HostsReport:
    """Make the host containers match the running instances of the emulated cloud."""
    settings = settings or load_settings()
    log = get_run_logger()
    if settings.target != "local":
        log.info("target %s: the instances are real hosts, nothing to emulate", settings.target)
        return HostsReport(hosts={}, created=[], removed=[], unchanged=[])
    instances = aws.project_instances(settings, states=("running",))
    r = host_containers.reconcile(settings, instances)
    log.info("hosts: %d created, %d removed, %d unchanged", len(r.created), len(r.removed), len(r.unchanged))
    return HostsReport(hosts=r.hosts, created=r.created, removed=r.removed, unchanged=r.unchanged)


if __name__ == "__main__":
    from stack.cli import main

    main(lambda s: hosts(s))
