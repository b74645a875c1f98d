"""Step 8, teardown: terraform destroy, then removal of the host containers (local).

A second teardown succeeds with nothing to do. ``--emulator`` also stops the emulated
cloud. Also served as a deployment on a nightly schedule (see flows/serve.py).
"""

from __future__ import annotations

import argparse

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.provision import terraform_init
from stack.localcloud import emulator
from stack.localcloud import hosts as host_containers
from stack.settings import StackSettings, load_settings
from stack.terraform import Terraform


class TeardownReport(BaseModel):
    destroyed: bool
    hosts_removed: list[str] = []
    terraform_processes: int


@flow(name="teardown")
def teardown(settings: StackSettings | None = None, stop_emulator: bool = False) -> TeardownReport:
    """Destroy every cloud resource of the stack."""
    settings = settings or load_settings()
    log = get_run_logger()
    tf = Terraform(settings)
    destroyed = False
    if not tf.has_state():
        log.info("nothing to destroy: the Terraform state holds no resources")
    else:
        if settings.target == "local":
            emulator.up(settings)
        tf.prepare()
        terraform_init(tf)
        tf.destroy()
        destroyed = True
    removed: list[str] = []
    if settings.target == "local":
        removed = host_containers.remove_all(settings)
        if removed:
            log.info("removed host containers and their volumes: %s", ", ".join(removed))
    if stop_emulator and settings.target == "local":
        emulator.down(settings)
        log.info("emulated cloud stopped")
    return TeardownReport(destroyed=destroyed, hosts_removed=removed, terraform_processes=tf.processes)


if __name__ == "__main__":
    from stack.cli import main

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emulator", action="store_true", help="also stop the emulated cloud (local)")
    args = parser.parse_args()
    main(lambda s: teardown(s, stop_emulator=args.emulator))
