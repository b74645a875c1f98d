"""Emulated load balancers: one HAProxy container per network load balancer of the project.

With several API servers (STACK_SERVER_COUNT >= 2) Terraform puts a network load
balancer in front of them: a TCP listener forwarding to a target group of the server
instances, health-checked over HTTPS. moto keeps that as state only (it reports every
target healthy and forwards nothing), so the twin runs it: a container named like the
load balancer (``prefect2-api``), on the stack network under the load balancer's DNS
name too, its first listener published on ``127.0.0.1:<load_balancer_port>`` only.

HAProxy forwards TCP: the servers' nginx terminate TLS with the stack's certificate and
clients verify it end to end, as through an NLB, so the load balancer holds no key. It
checks each target itself (the target group's path and protocol, every 2 s) and reaches
a target by its host container's name through Docker's DNS, so a host that restarts with
a new address is found again, and a stopped one is marked down, its connections closed.

:func:`reconcile` makes the containers follow the emulator's load balancers (created,
started, reloaded without a dropped connection when a target comes or goes, removed
with their load balancer); :func:`target_states` says which targets HAProxy sees up.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field

import docker
import docker.errors

from stack import aws
from stack.localcloud.emulator import LABEL_PROJECT, LABEL_ROLE, ensure_network
from stack.localcloud.images import docker_client, ensure_image
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

KIND = "load-balancer"                   # LABEL_ROLE of the containers
LABEL_CONFIG = "stack.lb-config"         # hash of the configuration the container was created with
LABEL_DNS_NAME = "stack.lb-dns-name"     # the load balancer's DNS name, its alias on the network
CONFIG_DIR = "/etc/haproxy"
CONFIG_FILE = f"{CONFIG_DIR}/haproxy.cfg"  # the image's CMD reads it
RUNTIME_SOCKET = "/run/haproxy.sock"
# Docker's embedded DNS server, in every container on a user-defined network.
DOCKER_DNS = "127.0.0.11:53"


@dataclass
class Listener:
    """A listener and its target group: ``targets`` are (server name, address, port)."""
    port: int
    health_path: str = "/"
    health_protocol: str = "HTTPS"        # the target group's: HTTPS, HTTP or TCP
    targets: list[tuple[str, str, int]] = field(default_factory=list)
    health_port: int | None = None        # None: the target's own port ("traffic-port")


@dataclass
class LoadBalancer:
    name: str
    dns_name: str
    listeners: list[Listener]


def _server_line(name: str, address: str, port: int, listener: Listener) -> str:
    check = "check"
    if listener.health_protocol == "HTTPS":
        # The check reads only the unauthenticated health endpoint: whether the target
        # answers, not who it is, so it needs neither the stack's CA nor a name to verify.
        # Clients' own connections are verified end to end by them.
        check += " check-ssl verify none"
    if listener.health_port:
        check += f" port {listener.health_port}"
    # Faster than an NLB's checks (10 s or more): a stopped host is out within about 6 s.
    return f"    server {name} {address}:{port} {check} inter 2s fall 2 rise 2"


def haproxy_config(listeners: list[Listener]) -> str:
    """HAProxy's configuration for ``listeners``: one frontend and one backend each.
    Sorted, so the same listeners always give the same bytes (a reload only on change)."""
    lines = [
        "# Written by stack/localcloud/loadbalancer.py: the twin of a network load balancer.",
        # No log section: in the foreground (-db) HAProxy writes its warnings, a target
        # going down or up among them, to docker logs; no line per connection.
        "global",
        f"    stats socket {RUNTIME_SOCKET} mode 600 level admin",
        "",
        "resolvers docker",
        # Targets are host containers, found by name: one that restarts with a new address
        # is found again within seconds.
        f"    nameserver docker {DOCKER_DNS}",
        "    hold valid 2s",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        # Websockets (events) and long polls hold a connection open for long.
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout tunnel 1h",
        # A connection refused by a target that has just gone is tried on another.
        "    option redispatch",
        "    retries 3",
    ]
    for listener in sorted(listeners, key=lambda li: li.port):
        lines += ["", f"frontend listener-{listener.port}", f"    bind :{listener.port}",
                  f"    default_backend targets-{listener.port}",
                  "", f"backend targets-{listener.port}", "    balance roundrobin"]
        if listener.health_protocol in ("HTTP", "HTTPS"):
            # HTTP/1.1 with a Host header: HAProxy's default check (HTTP/1.0, no Host)
            # reaches Prefect through nginx with an empty Host, and uvicorn answers 400.
            lines += ["    option httpchk",
                      f"    http-check send meth GET uri {listener.health_path} ver HTTP/1.1 hdr Host localhost",
                      "    http-check expect status 200"]
        # init-addr: start even when a target's container is stopped (its name does not
        # resolve); the server stays down until it does. A target marked down has its
        # connections closed, so its clients connect again, to a live one.
        lines.append("    default-server resolvers docker resolve-prefer ipv4 init-addr last,libc,none "
                     "on-marked-down shutdown-sessions")
        lines += [_server_line(name, address, port, listener)
                  for name, address, port in sorted(listener.targets)]
    return "\n".join(lines) + "\n"


# --- what the emulator holds -----------------------------------------------------------

def _forwarded_group(listener: dict) -> str | None:
    for action in listener.get("DefaultActions", []):
        if action.get("Type") != "forward":
            continue
        if action.get("TargetGroupArn"):
            return action["TargetGroupArn"]
        groups = action.get("ForwardConfig", {}).get("TargetGroups", [])
        if groups:
            return groups[0]["TargetGroupArn"]
    return None


def load_balancers(settings: StackSettings, instances: list[dict]) -> list[LoadBalancer]:
    """The project's network load balancers in the emulator, their targets as host
    containers (``instances``: dicts with id and name). A registered instance without a
    host (terminated) is left out."""
    elb = aws.client(settings, "elbv2")
    hosts = {i["id"]: i["name"] for i in instances}
    log = get_logger()
    found = []
    for page in elb.get_paginator("describe_load_balancers").paginate():
        for lb in page["LoadBalancers"]:
            if not lb["LoadBalancerName"].startswith(f"{settings.name_prefix}-"):
                continue
            if lb.get("Type") != "network":
                log.warning("load balancer %s is of type %s; the twin emulates network load balancers only",
                            lb["LoadBalancerName"], lb.get("Type"))
                continue
            listeners = []
            for listener in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]:
                group_arn = _forwarded_group(listener)
                if listener.get("Protocol") != "TCP" or group_arn is None:
                    log.warning("listener %s of %s is not a TCP forward; the twin leaves it out",
                                listener["Port"], lb["LoadBalancerName"])
                    continue
                group = elb.describe_target_groups(TargetGroupArns=[group_arn])["TargetGroups"][0]
                health = elb.describe_target_health(TargetGroupArn=group_arn)["TargetHealthDescriptions"]
                targets = [(hosts[t["Target"]["Id"]], hosts[t["Target"]["Id"]], t["Target"].get("Port") or group["Port"])
                           for t in health if t["Target"]["Id"] in hosts]
                port = group.get("HealthCheckPort") or "traffic-port"
                listeners.append(Listener(
                    port=listener["Port"], health_path=group.get("HealthCheckPath") or "/",
                    health_protocol=group.get("HealthCheckProtocol") or "TCP", targets=targets,
                    health_port=None if port == "traffic-port" else int(port)))
            found.append(LoadBalancer(lb["LoadBalancerName"], lb["DNSName"], listeners))
    return found


# --- the containers --------------------------------------------------------------------

def project_load_balancers(client: docker.DockerClient, settings: StackSettings) -> dict:
    """The project's load balancer containers, by name."""
    found = client.containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={settings.name_prefix}",
                                                                f"{LABEL_ROLE}={KIND}"]})
    return {c.name: c for c in found}


def _config_archive(config: str) -> bytes:
    data = config.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(CONFIG_FILE.rsplit("/", 1)[1])
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _current_config(container) -> str | None:
    """The configuration file in the container (None: none there)."""
    try:
        stream, _ = container.get_archive(CONFIG_FILE)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        return member.read().decode() if member else None


def _ports(settings: StackSettings, lb: LoadBalancer) -> dict:
    """Only the first listener is published, on the operator's loopback: one is all the
    stack has. Every listener answers on the stack network."""
    first = min((li.port for li in lb.listeners), default=None)
    return {} if first is None else {f"{first}/tcp": ("127.0.0.1", settings.load_balancer_port)}


def _outdated(container, image: str, lb: LoadBalancer, ports: dict) -> bool:
    """Whether the container is not what ``lb`` needs now (another image, published
    port or DNS name): it is then made again."""
    bound = {k: (v[0]["HostIp"], int(v[0]["HostPort"]))
             for k, v in (container.attrs["HostConfig"].get("PortBindings") or {}).items() if v}
    return (image not in (container.image.tags if container.image else [])
            or bound != ports or container.labels.get(LABEL_DNS_NAME) != lb.dns_name)


def _create(client: docker.DockerClient, settings: StackSettings, image: str, lb: LoadBalancer,
            config: str, ports: dict) -> None:
    net = ensure_network(client, settings)
    c = client.containers.create(
        image, name=lb.name, hostname=lb.name, ports=ports, network=net.name,
        labels={LABEL_PROJECT: settings.name_prefix, LABEL_ROLE: KIND, LABEL_DNS_NAME: lb.dns_name,
                LABEL_CONFIG: hashlib.sha256(config.encode()).hexdigest()[:16]},
        # Back with the Docker engine, like the load balancer after a reboot of this machine.
        restart_policy={"Name": "unless-stopped"},
    )
    try:
        c.put_archive(CONFIG_DIR, _config_archive(config))
        # Reached on the stack network by its DNS name too, as on aws.
        net.disconnect(c)
        net.connect(c, aliases=[lb.dns_name])
        c.start()
    except docker.errors.APIError as exc:
        c.remove(force=True)  # no half-made load balancer: the next reconcile makes it again
        if "port is already allocated" in str(exc) or "address already in use" in str(exc):
            raise StackError(f"the load balancer {lb.name} cannot publish 127.0.0.1:{settings.load_balancer_port}: "
                             "another program uses that port; stop it or set STACK_LOAD_BALANCER_PORT to a free "
                             "port") from None
        raise


def _reload(container, config: str) -> None:
    """The new configuration, checked, then SIGUSR2 to HAProxy's master: new workers
    take the listening socket over, the old ones finish their connections."""
    container.put_archive(CONFIG_DIR, _config_archive(config))
    checked = container.exec_run(["haproxy", "-c", "-q", "-f", CONFIG_FILE])
    if checked.exit_code != 0:
        raise StackError(f"HAProxy refuses the configuration written to {container.name} "
                         f"({checked.output.decode(errors='replace').strip()}); it keeps the previous one. "
                         "This is a bug of stack/localcloud/loadbalancer.py: see haproxy_config")
    container.kill(signal="SIGUSR2")


def reconcile(settings: StackSettings, instances: list[dict]) -> list[str]:
    """Make the load balancer containers follow the emulator's load balancers, their
    targets the host containers of ``instances`` (dicts with id and name, as
    ``aws.project_instances`` gives them). Returns what was done, one line each."""
    client = docker_client()
    log = get_logger()
    wanted = {lb.name: lb for lb in load_balancers(settings, instances)}
    existing = project_load_balancers(client, settings)
    actions = []
    for name, c in sorted(existing.items()):
        if name not in wanted:
            log.info("removing load balancer container %s: its load balancer is gone", name)
            c.remove(force=True)
            actions.append(f"removed {name}")
    if not wanted:
        return actions
    image = ensure_image(client, "lb")
    for name, lb in sorted(wanted.items()):
        config = haproxy_config(lb.listeners)
        targets = sum(len(li.targets) for li in lb.listeners)
        ports = _ports(settings, lb)
        c = existing.get(name)
        verb = "created"
        if c is not None and _outdated(c, image, lb, ports):
            log.info("replacing load balancer container %s (its image, port or DNS name changed)", name)
            c.remove(force=True)
            c, verb = None, "recreated"
        if c is None:
            log.info("creating load balancer container %s (%d targets) on 127.0.0.1:%s",
                     name, targets, settings.load_balancer_port)
            _create(client, settings, image, lb, config, ports)
            actions.append(f"{verb} {name} ({targets} targets)")
        elif c.status != "running":
            c.put_archive(CONFIG_DIR, _config_archive(config))
            c.start()
            actions.append(f"started {name} ({targets} targets)")
        elif _current_config(c) != config:
            _reload(c, config)
            actions.append(f"reloaded {name} ({targets} targets)")
    return actions


def remove_all(settings: StackSettings) -> list[str]:
    """Remove every load balancer container of the project (teardown)."""
    names = []
    for name, c in sorted(project_load_balancers(docker_client(), settings).items()):
        c.remove(force=True)
        names.append(name)
    return names


def target_states(settings: StackSettings, lb_name: str) -> dict[str, str]:
    """What HAProxy in ``lb_name``'s container makes of each target, by server name (the
    host container's): "UP", "DOWN", on the way ("UP 1/2", "DOWN 1/2"), or "MAINT
    (resolution)": a stopped host is "DOWN" within about 6 s, and "MAINT (resolution)"
    once Docker's DNS has not known its name for 30 s (HAProxy's hold nx)."""
    try:
        c = docker_client().containers.get(lb_name)
    except docker.errors.NotFound:
        raise StackError(f"no load balancer container {lb_name}; run python -m flows.hosts to make it") from None
    done = c.exec_run(["sh", "-c", f'echo "show stat" | socat stdio {RUNTIME_SOCKET}'])
    out = done.output.decode(errors="replace")
    if done.exit_code != 0 or not out.startswith("# "):
        raise StackError(f"HAProxy in {lb_name} did not answer on its runtime socket ({out.strip()}); "
                         f"see: docker logs {lb_name}")
    header, *rows = out[2:].splitlines()
    columns = header.split(",")
    states = {}
    for row in rows:
        values = dict(zip(columns, row.split(",")))
        if values.get("svname") not in (None, "FRONTEND", "BACKEND"):
            states[values["svname"]] = values["status"]
    return states


def follow_targets(settings: StackSettings, wait_for: str | None = None, timeout: float = 60) -> list[str]:
    """Make the running load balancer containers follow their target groups now: what
    configure's rolling restart calls after it deregistered an API host (that host's new
    connections stop at once; the old HAProxy workers finish the ones it had) and after
    it registered it again, then with ``wait_for`` (that host's name), waiting until
    HAProxy sees it up. Never creates, replaces or removes a container (the hosts step
    does that)."""
    import time

    instances = aws.project_instances(settings, states=("running",))
    client = docker_client()
    existing = project_load_balancers(client, settings)
    actions = []
    for lb in load_balancers(settings, instances):
        c = existing.get(lb.name)
        if c is None or c.status != "running":
            continue
        config = haproxy_config(lb.listeners)
        if _current_config(c) != config:
            _reload(c, config)
            actions.append(f"reloaded {lb.name} ({sum(len(li.targets) for li in lb.listeners)} targets)")
        if wait_for is None or all(name != wait_for for li in lb.listeners for name, _, _ in li.targets):
            continue
        deadline = time.monotonic() + timeout
        while (states := target_states(settings, lb.name)).get(wait_for) != "UP":
            if time.monotonic() > deadline:
                raise StackError(f"load balancer {lb.name}: {wait_for} not up after {timeout:.0f} s: {states}")
            time.sleep(0.5)
    return actions


if __name__ == "__main__":
    # ``python -m stack.localcloud.loadbalancer follow``: run by configure's rolling
    # restart of the API hosts on the emulated cloud (ansible/roles/prefect_server).
    import sys

    from stack.settings import load_settings

    if sys.argv[1:2] != ["follow"] or len(sys.argv) > 3:
        sys.exit("usage: python -m stack.localcloud.loadbalancer follow [host to wait for]")
    print("; ".join(follow_targets(load_settings(), wait_for=(sys.argv[2:] or [None])[0])) or "nothing to change")
