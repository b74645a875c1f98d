"""The control plane's runner: every step as a deployment with a Run button in the
Prefect UI, and teardown on a nightly schedule (STACK_NIGHTLY_TEARDOWN_CRON).

Started in the background by the entry points (``stack/controlplane.py``); run it in the
foreground with ``python -m flows.serve``.
"""

from __future__ import annotations

from prefect import serve

from flows.bootstrap import bootstrap
from flows.configure import configure
from flows.deploy import deploy
from flows.hosts import hosts
from flows.preflight import preflight
from flows.provision import provision
from flows.register import register
from flows.smoke import smoke_test
from flows.teardown import teardown
from stack.settings import load_settings


def deployments(settings):
    tag = settings.name_prefix
    steps = [bootstrap, preflight, provision, hosts, configure, register, deploy, smoke_test]
    out = [f.to_deployment(name=f"{tag}-{f.name}", tags=[tag]) for f in steps]
    out.append(teardown.to_deployment(
        name=f"{tag}-nightly-teardown", tags=[tag],
        cron=settings.nightly_teardown_cron or None,
        description="Destroys the stack's cloud resources; scheduled nightly.",
    ))
    return out


if __name__ == "__main__":
    serve(*deployments(load_settings()))
