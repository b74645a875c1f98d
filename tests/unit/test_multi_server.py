"""Multi-server mode's choices that need no stack (STACK_SERVER_COUNT): with one server
host nothing of it exists (the playbook's variables and the operator's URL are what they
were); with two or more, clients go through the load balancer and the servers get Redis.
That it works is tests/e2e/test_scale.py's (two API hosts, one stopped mid-burst)."""

from __future__ import annotations

from stack import platform
from stack.settings import StackSettings


def settings(**kw) -> StackSettings:
    return StackSettings(name_prefix="p2unit", load_balancer_port=4402, platform_port=4401, **kw)


def test_one_server_host_gives_the_playbook_no_multi_server_variable_and_keeps_its_url():
    from flows.configure import multi_server_vars

    one = settings()
    assert not one.multi_server
    assert multi_server_vars(one) == {}
    assert platform.api_url(one) == "https://127.0.0.1:4401/api"
    assert platform.api_address(one) is None


def test_two_server_hosts_go_through_the_load_balancer_and_share_the_redis_host():
    from flows.configure import multi_server_vars

    two = settings(server_count=2)
    assert two.multi_server and two.load_balancer_name == "p2unit-api"
    assert platform.api_url(two) == "https://127.0.0.1:4402/api"
    assert multi_server_vars(two) == {
        "prefect_server_multi": True,
        "stack_api_address": "p2unit-api",          # the workers' URL: the balancer's container on the network
        "prefect_server_redis_address": "p2unit-redis",
        "prefect_server_redis_ca": "/etc/prefect/ca.pem",  # the redis host's certificate is the stack CA's
    }


def test_the_server_certificate_names_the_load_balancer_in_multi_server_mode():
    assert "p2unit-api" not in platform.server_tls_names(settings())
    assert "p2unit-api" in platform.server_tls_names(settings(server_count=3))
