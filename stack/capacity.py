"""How many flow runs a worker host runs at once by default: what its instance type's
memory holds, so that a t3.small is not promised more runs than fit (an OOM-killed run
ends Crashed, or takes a worker with it).

Measured on the twin (2026-11-30, Prefect 3.8.8, the testflow with its two subflows): a
process flow run peaks at 136 MB RSS, a Docker flow run's container at 121 MiB; the two
workers take about 130 MB each, dockerd and containerd 120 MB, the rest of the system
about 70 MB. Each host has two pools (process and Docker), each allowed the limit.
"""

from __future__ import annotations

from stack.settings import StackSettings

RUN_MIB = 150                 # one flow run, process or Docker, rounded up
HOST_BASE_MIB = 650           # workers, Docker engine, system, and room for the page cache
POOLS_PER_HOST = 2            # process and Docker
MAX_DEFAULT_CONCURRENCY = 8   # the most a default gives, on any size


def concurrency_for_memory(memory_mib: int) -> int:
    """Runs per pool on a host of ``memory_mib``: both pools full fit beside the base."""
    return max(1, min(MAX_DEFAULT_CONCURRENCY, (memory_mib - HOST_BASE_MIB) // (POOLS_PER_HOST * RUN_MIB)))


_memory: dict[tuple, int] = {}  # (target, region, endpoint, instance type) -> MiB, per process


def _memory_mib(settings: StackSettings) -> int:
    from stack import aws

    instance_type, region = settings.instance_type, settings.region
    try:
        found = aws.client(settings, "ec2").describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except Exception as exc:  # InvalidInstanceType, or the cloud does not answer
        if "InvalidInstanceType" in str(exc):
            raise aws.SettingRefused(f"setting STACK_INSTANCE_TYPE: {instance_type} is not an instance type of "
                                     f"{region}; choose one EC2 offers there (e.g. t3.small)") from None
        raise
    if not found:
        raise aws.SettingRefused(f"setting STACK_INSTANCE_TYPE: {instance_type} is not an instance type of {region}")
    return int(found[0]["MemoryInfo"]["SizeInMiB"])


def instance_memory_mib(settings: StackSettings) -> int:
    """The memory of STACK_INSTANCE_TYPE, from EC2 (DescribeInstanceTypes)."""
    key = (settings.target, settings.region, settings.emulator_endpoint, settings.instance_type)
    if key not in _memory:
        _memory[key] = _memory_mib(settings)
    return _memory[key]


def worker_concurrency(settings: StackSettings) -> int:
    """STACK_WORKER_CONCURRENCY, or by default what the instance type's memory holds."""
    if settings.worker_concurrency is not None:
        return settings.worker_concurrency
    return concurrency_for_memory(instance_memory_mib(settings))


def overcommit_warning(settings: StackSettings) -> str | None:
    """A line saying so when STACK_WORKER_CONCURRENCY promises more runs than fit."""
    if settings.worker_concurrency is None:
        return None
    memory = instance_memory_mib(settings)
    needed = HOST_BASE_MIB + POOLS_PER_HOST * RUN_MIB * settings.worker_concurrency
    if needed <= memory:
        return None
    return (f"STACK_WORKER_CONCURRENCY={settings.worker_concurrency} runs per pool need about {needed} MiB per worker "
            f"host, more than a {settings.instance_type}'s {memory} MiB: runs may be killed for memory; "
            f"{concurrency_for_memory(memory)} fit (or choose a larger STACK_INSTANCE_TYPE)")
