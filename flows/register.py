"""The register step: blocks (AWS credentials, S3 bucket), work pools (process, docker,
and the operator's process pool) with their queues, and the automation that marks flow
runs without heartbeats Crashed, on the platform server. Registering twice leaves the
same objects (the automation is replaced by one of the same name)."""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists
from pydantic import BaseModel

from blocks import definitions
from stack import platform
from stack.localcloud.flow_runner import FlowRunnerImage
from stack.localcloud.flow_runner import published_image
from stack.lock import exclusive
from stack.settings import StackSettings, load_settings


class RegisterReport(BaseModel):
    blocks: list[str]
    work_pools: dict[str, list[str]]   # pool -> queues
    automations: list[str] = []
    docker_image: str = ""             # the Docker pool's image (its probe checks the pool still has it)


async def _register(settings: StackSettings, url: str, image: FlowRunnerImage) -> RegisterReport:
    async with platform.prefect_client(settings, url) as client:
        creds = definitions.flow_code_credentials(settings)
        await creds.asave(platform.FLOW_CODE_CREDENTIALS, overwrite=True, client=client)
        bucket = definitions.flow_code_bucket(settings, creds)
        await bucket.asave(platform.FLOW_CODE_BUCKET, overwrite=True, client=client)

        pools: dict[str, list[str]] = {}
        for name, (kind, template, limit) in definitions.work_pools(settings, image.reference, image.extra_pip_packages).items():
            try:
                await client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template,
                                                             concurrency_limit=limit,
                                                             description=platform.POOL_DESCRIPTIONS[name]))
            except ObjectAlreadyExists:
                await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template, concurrency_limit=limit,
                                                                   description=platform.POOL_DESCRIPTIONS[name]))
            existing = {q.name for q in await client.read_work_queues(work_pool_name=name)}
            for queue in platform.QUEUES:
                if queue not in existing:
                    await client.create_work_queue(name=queue, work_pool_name=name)
            pools[name] = sorted({q.name for q in await client.read_work_queues(work_pool_name=name)})
        automation = definitions.zombie_automation()
        for old in await client.read_automations_by_name(automation.name):
            await client.delete_automation(old.id)
        await client.create_automation(automation)
    return RegisterReport(
        automations=[automation.name], docker_image=image.reference,
        blocks=[f"aws-credentials/{platform.FLOW_CODE_CREDENTIALS}", f"s3-bucket/{platform.FLOW_CODE_BUCKET}"],
        work_pools=pools,
    )


@flow(name="register")
@exclusive
def register(settings: StackSettings | None = None, platform_url: str | None = None,
             flow_runner_image: str | None = None) -> RegisterReport:
    """Create or update the platform's blocks and work pools (on ``platform_url``, with the
    Docker pool on ``flow_runner_image``: configure's outputs; run alone, the current ones)."""
    settings = settings or load_settings()
    url = platform_url or platform.operator_api_url(settings)
    image = FlowRunnerImage.of(flow_runner_image or published_image(settings).reference, settings)
    platform.wait_ready(settings, url)
    report = asyncio.run(_register(settings, url, image))
    log = get_run_logger()
    log.info("blocks: %s; Docker pool image %s", ", ".join(report.blocks), image.reference)
    for pool, queues in report.work_pools.items():
        log.info("work pool %s with queues %s", pool, ", ".join(queues))
    return report


if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.register", __doc__)
    main(lambda s: register(s))
