"""The load balancer twin's HAProxy configuration (stack/localcloud/loadbalancer.py):
TCP passthrough to every target with its own health checks, targets found again through
Docker's DNS, and the same bytes for the same load balancer (a reload only on change)."""

from __future__ import annotations

from stack.localcloud.loadbalancer import Listener, haproxy_config


def _api(targets, protocol="HTTPS"):
    return Listener(port=4200, health_path="/api/health", health_protocol=protocol, targets=targets)


def _lines(config: str) -> list[str]:
    return [line.strip() for line in config.splitlines()]


def test_two_targets_are_both_checked_over_tls_and_resolved_by_docker_dns():
    lines = _lines(haproxy_config([_api([("p2test-ec2-0", "p2test-ec2-0", 4200),
                                         ("p2test-api-1", "p2test-api-1", 4200)])]))
    servers = [line for line in lines if line.startswith("server ")]
    assert servers == [
        "server p2test-api-1 p2test-api-1:4200 check check-ssl verify none inter 2s fall 2 rise 2",
        "server p2test-ec2-0 p2test-ec2-0:4200 check check-ssl verify none inter 2s fall 2 rise 2",
    ]
    assert "mode tcp" in lines and "bind :4200" in lines and "balance roundrobin" in lines
    assert "option httpchk" in lines and "http-check expect status 200" in lines
    assert "http-check send meth GET uri /api/health ver HTTP/1.1 hdr Host localhost" in lines
    assert "resolvers docker" in lines and "nameserver docker 127.0.0.11:53" in lines
    default_server = next(line for line in lines if line.startswith("default-server "))
    for option in ("resolvers docker", "init-addr last,libc,none", "on-marked-down shutdown-sessions"):
        assert option in default_server
    for timeout in ("timeout client 1h", "timeout server 1h", "timeout tunnel 1h", "timeout connect 5s"):
        assert timeout in lines
    assert not any(line.startswith(("crt", "ssl-default")) or " crt " in line for line in lines)  # no certificate


def test_the_same_targets_in_any_order_give_the_same_bytes():
    a, b = ("p2test-ec2-0", "p2test-ec2-0", 4200), ("p2test-api-1", "p2test-api-1", 4200)
    assert haproxy_config([_api([a, b])]) == haproxy_config([_api([b, a])])
    other = Listener(port=4300, health_path="/", health_protocol="TCP", targets=[])
    assert haproxy_config([_api([a]), other]) == haproxy_config([other, _api([a])])


def test_a_listener_without_targets_still_has_its_backend():
    lines = _lines(haproxy_config([_api([])]))
    assert "frontend listener-4200" in lines and "default_backend targets-4200" in lines
    assert "backend targets-4200" in lines
    assert not any(line.startswith("server ") for line in lines)


def test_an_http_health_check_does_not_use_tls():
    lines = _lines(haproxy_config([_api([("p2test-api-1", "p2test-api-1", 4200)], protocol="HTTP")]))
    server = next(line for line in lines if line.startswith("server "))
    assert "check-ssl" not in server and "verify" not in server
    assert "http-check send meth GET uri /api/health ver HTTP/1.1 hdr Host localhost" in lines


def test_a_tcp_health_check_only_connects():
    lines = _lines(haproxy_config([_api([("p2test-api-1", "p2test-api-1", 4200)], protocol="TCP")]))
    assert not any(line.startswith(("option httpchk", "http-check")) for line in lines)
    assert any(line.startswith("server p2test-api-1 ") and " check " in line for line in lines)


def test_a_health_check_port_other_than_the_traffic_port_is_checked_there():
    listener = Listener(port=4200, health_path="/api/health", health_protocol="HTTPS",
                        targets=[("p2test-api-1", "p2test-api-1", 4200)], health_port=8080)
    server = next(line for line in _lines(haproxy_config([listener])) if line.startswith("server "))
    assert " port 8080 " in server and server.split()[2] == "p2test-api-1:4200"
