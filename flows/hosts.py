"""The hosts step (local target only): one systemd container per instance, following the
instance's state the way EC2 would, booted by cloud-init from the instance's user_data
and key pair, its sshd on a loopback port recorded in the instance's tags (see
stack/localcloud/hosts.py)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.provision import ProvisionOutputs
from stack import aws
from stack.localcloud import hosts as host_containers
from stack.localcloud import loadbalancer
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings


class HostsReport(BaseModel):
    hosts: dict[str, str]          # instance id -> host container name (running hosts)
    ssh_ports: dict[str, int] = {}  # instance id -> loopback port of its sshd
    created: list[str]
    started: list[str] = []
    stopped: list[str] = []
    removed: list[str]
    unchanged: list[str]
    data_volume: str | None = None  # named Docker volume mounted on the server host
    load_balancer: list[str] = []   # what the load balancer twin did (several API servers)


@flow(name="hosts")
@exclusive
def hosts(settings: StackSettings | None = None, provisioned: ProvisionOutputs | None = None) -> HostsReport:
    """Make the host containers follow the emulated cloud's instances."""
    settings = settings or load_settings()
    log = get_run_logger()
    if settings.target != "local":
        log.info("target %s: the instances are real hosts, nothing to emulate", settings.target)
        return HostsReport(hosts={}, created=[], removed=[], unchanged=[])
    # The instances' current states (running, stopped) come from EC2 itself: a user may
    # have stopped or started one since provision ran.
    host_containers.record_self_stopped(settings)  # a host that powered itself off is a stopped instance
    instances = aws.project_instances(settings, states=("pending", "running", "stopping", "stopped"))
    data_volume = provisioned.data_volume.name if provisioned else settings.data_volume_name
    r = host_containers.reconcile(settings, instances, data_volume=data_volume,
                                  launch_data=lambda i: host_containers.LaunchData(*aws.launch_data(settings, i)))
    # Where each host's sshd answers, for Ansible's inventory and for backups (tags that
    # stand in for the public IP an instance has on aws).
    aws.record_ssh_endpoints(settings, r.ssh_ports)
    # The API servers' load balancer (STACK_SERVER_COUNT >= 2), its targets these hosts.
    # With one server host the emulator is not asked, unless a balancer container is left
    # (the scale-in to one server host removes it here).
    lb_actions = (loadbalancer.reconcile(settings, instances) if settings.multi_server
                  or loadbalancer.project_load_balancers(loadbalancer.docker_client(), settings) else [])
    if lb_actions:
        log.info("load balancer: %s", "; ".join(lb_actions))
    log.info("hosts: %d created, %d started, %d stopped, %d removed, %d unchanged",
             len(r.created), len(r.started), len(r.stopped), len(r.removed), len(r.unchanged))
    return HostsReport(hosts=r.hosts, ssh_ports=r.ssh_ports, created=r.created, started=r.started, stopped=r.stopped,
                       removed=r.removed, unchanged=r.unchanged, data_volume=data_volume, load_balancer=lb_actions)


if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.hosts", __doc__)
    main(lambda s: hosts(s))
