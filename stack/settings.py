"""The stack's settings: one typed object, read once at the entry points and passed down.

Every field comes from an environment variable ``STACK_<FIELD>`` (for example
``STACK_WORKER_COUNT=2``) or from the optional TOML file named by ``STACK_CONFIG_FILE``
(default ``stack.toml`` in the working directory, git-ignored). Environment wins.

Bad input raises :class:`SettingsError` whose message is one line per bad setting,
naming the environment variable and what to do; nothing is created before that.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "STACK_"
REPO_ROOT = Path(__file__).resolve().parent.parent

# moto ships an old AMI catalogue; this one exists in it. Real AWS needs STACK_AMI_ID.
EMULATOR_DEFAULT_AMI = "ami-785db401"
# moto accepts any key. These are not secrets, but distinctive, so the tests can prove
# that no AWS key the stack handles ever reaches a log or an artifact.
EMULATOR_ACCESS_KEY = "AKIAEMULATEDSTACK000"
EMULATOR_SECRET_KEY = "emulated-secret-key-never-logged"

_REGION_RE = re.compile(r"^(us|eu|ap|sa|ca|me|af|il|mx)(-gov)?-(north|south|east|west|central|northeast|southeast|northwest|southwest)-\d$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SettingsError(ValueError):
    """Settings are invalid; ``str()`` is one line per problem, ready to print."""


class StackSettings(BaseSettings):
    """Everything the stack's steps need to know, validated up front."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, frozen=True
    )

    target: Literal["local", "aws"] = Field(
        "local", description="`local`: moto + host containers; `aws`: real AWS."
    )
    region: str = Field("us-east-1", description="AWS region.")
    name_prefix: str = Field(
        "prefect2",
        description="Prefix of every resource name and the Project tag; hosts are <prefix>-ec2-N. 2-20 lowercase "
                    "letters, digits and single '-' between them, starting with a letter; not 'internal' nor "
                    "'internal-...' (AWS reserves it for balancer names).",
    )
    instance_type: str = Field("t3.small", description="EC2 instance type of every host.")
    worker_count: int = Field(1, ge=1, le=10, description="Number of worker hosts (1-10).")
    server_count: int = Field(
        1, ge=1, le=5,
        description="Number of Prefect API server hosts (1-5). 1: one server host runs everything, as always. 2 or "
                    "more: Prefect's multi-server mode (docs/architecture.md): API servers with --no-services behind "
                    "a load balancer, the background services and PostgreSQL on the first server host, Redis for "
                    "messaging (ElastiCache on aws, a Redis host on local).",
    )
    worker_concurrency: int | None = Field(
        None, ge=1, le=100,
        description="Flow runs each worker (process and Docker) runs at once; the pools' limit is this times the "
                    "worker hosts. Default: what the instance type's memory holds, at most 8 (stack/capacity.py).",
    )
    operator_cidr: str | None = Field(
        None,
        description="CIDR allowed to reach ports 4200 and 22. Default 127.0.0.1/32 on local; required on aws.",
    )
    allow_public_api: bool = Field(
        False, description="Explicit opt-in to open the Prefect API (4200) to 0.0.0.0/0."
    )
    ami_id: str | None = Field(
        None, description="The stock AMI: the AMI bake's builder starts from it and new hosts boot the AMI baked from it "
                    "(STACK_HOST_IMAGE=stock: this AMI itself). Default on local: an AMI moto knows; required on aws."
    )
    bucket_name: str | None = Field(
        None, description="S3 bucket for flow code and backups/. Default: <prefix>-flow-code-<account id>-<region>; "
                          "a stack keeps the name it was made with (older stacks: <prefix>-flow-code-<hash>)."
    )
    backup_retention_days: int = Field(
        30, ge=1, le=3650, description="Days each backup in the bucket (backups/) is kept before it expires.",
    )
    state_bucket: str | None = Field(
        None, description="S3 bucket of the Terraform states (made by the stack before the first terraform init). "
                          "Default: <prefix>-tfstate-<account id>-<region>.",
    )
    subnet_id: str | None = Field(
        None, pattern=r"^subnet-[0-9a-f]+$",
        description="Subnet of every host, for an account or region without a default VPC; in the availability zone.",
    )
    ssh_user: str = Field("admin", description="Login user of the AMI (cloud-init's default user), for SSH.")
    host_image: Literal["baked", "stock"] = Field(
        "baked",
        description="What new hosts boot: `baked` (the roles' install tasks done ahead of time, see STACK_BAKE) or "
                    "`stock` (STACK_AMI_ID as it is; plain Debian on local: configure installs everything over "
                    "SSH). Running hosts keep what they booted (configure installs the difference); on local a "
                    "switch between the two replaces them.",
    )
    bake: Literal["container", "ami"] | None = Field(
        None,
        description="How the baked host image is made: `ami`, as on aws (a builder instance from STACK_AMI_ID, the "
                    "roles' install tasks over SSH, EC2 CreateImage; provision gives new instances that AMI), the "
                    "default and only choice on aws; `container`, the local default (a build container committed as "
                    "the hosts' image, ahead of time, beside provision). `ami` on local takes the aws path on the "
                    "twin.",
    )
    emulator_port: int = Field(4566, ge=1024, le=65535, description="Loopback port of moto.")
    control_plane_port: int = Field(
        4200, ge=1024, le=65535, description="Loopback port of the local control-plane Prefect server."
    )
    platform_port: int = Field(
        4201, ge=1024, le=65535, description="Loopback port the platform server host publishes (local)."
    )
    load_balancer_port: int = Field(
        4202, ge=1024, le=65535,
        description="Loopback port the load balancer publishes on local when server_count is 2 or more.",
    )
    state_dir: Path = Field(
        Path(".stack"), description="Where state, keys, logs and generated files live (git-ignored)."
    )
    flow_runner_image: str | None = Field(
        None,
        description="Image of the Docker work pool, pulled by the worker hosts. Default: the image the stack "
                    "builds and pushes to its ECR repository. On aws you may name an image of your own instead "
                    "(pushed to that repository, or any the worker hosts can pull); on local this name only tags "
                    "the image built here.",
    )
    flow_runner_build: Literal["operator", "host"] | None = Field(
        None,
        description="Where the stack builds the flow-runner image when its repository lacks it: `host`, on the "
                    "first worker host, pushed with the operator's short-lived ECR token (aws, and the only choice "
                    "there: no Docker engine needed here); `operator`, on this machine's Docker engine (the "
                    "default on local). `host` on local takes the aws path on the twin.",
    )
    prefect_version: str | None = Field(
        None, validate_default=True,
        description="Prefect version of the platform: the server, the workers and the flow-runner image. Default: "
                    "the one constraints.txt pins. Another needs its lock, locks/prefect-<version>.txt "
                    "(bin/lock-prefect <version> writes it). A higher version than the platform runs upgrades it "
                    "in place after a backup; a lower one is refused.",
    )
    nightly_teardown_cron: str = Field(
        "0 3 * * *",
        description="Cron of the nightly teardown (compute only; data kept) on the control plane; empty for no schedule.",
    )
    schedule_timezone: str = Field(
        "UTC", description="Time zone of the nightly schedules: the teardown, the backup and the hosts' safety stop "
                           "(an IANA name like Europe/Madrid). Formerly STACK_NIGHTLY_TEARDOWN_TIMEZONE, still read.",
    )
    teardown_grace_minutes: int = Field(
        30, ge=1, le=1440,
        description="A scheduled teardown that starts later than this after its time is skipped as overdue; "
                    "the hosts' safety stop (STACK_SAFETY_STOP) fires this long after the teardown's time.",
    )
    safety_stop: bool = Field(
        True,
        description="Each host powers itself off (an EC2 stop: no compute billed, disks kept; the server takes a "
                    "final backup first) at the nightly teardown's time plus STACK_TEARDOWN_GRACE_MINUTES, in case "
                    "the teardown did not run (the control plane's machine asleep). The next bootstrap starts the "
                    "same instances. false: the hosts stay up (a stack run around the clock).",
    )
    backup_cron: str = Field(
        "0 2 * * *",
        description="Cron of the platform database backup (a systemd timer on the server host, in "
                    "STACK_SCHEDULE_TIMEZONE); empty for no schedule.",
    )
    lock_wait_seconds: int = Field(
        600, ge=0, le=86400,
        description="How long a command waits for another command on the same stack to finish.",
    )
    data_volume_size: int = Field(
        10, ge=1, le=16384, description="GiB of the EBS volume that holds the platform's database.",
    )
    availability_zone: str | None = Field(
        None, description="Availability zone of the hosts and the data volume. Default: the region's 'a' zone.",
    )
    terraform_plugin_mirror: Path | None = Field(
        None,
        description="Filesystem mirror holding registry.terraform.io/hashicorp/aws; detected when unset.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file()))

    # --- field checks -----------------------------------------------------------------
    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION_RE.match(v):
            raise ValueError(f"{v!r} is not an AWS region; use one like us-east-1 or eu-west-1")
        return v

    @field_validator("name_prefix")
    @classmethod
    def _name_prefix(cls, v: str) -> str:
        # Single '-' between letters and digits: AWS refuses "--" in an ElastiCache id;
        # and a load balancer named "internal-...".
        if len(v) > 20 or not re.fullmatch(r"[a-z](-?[a-z0-9])+", v) or re.match(r"internal(-|$)", v):
            raise ValueError(
                f"{v!r} is not usable in resource names; use 2-20 lowercase letters, digits or single '-' "
                "between them, starting with a letter, not 'internal' nor 'internal-...'"
            )
        return v

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9]+", v):
            raise ValueError(f"{v!r} is not an EC2 instance type; use one like t3.small")
        return v

    @field_validator("operator_cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.ip_network(v, strict=True))
        except ValueError:
            raise ValueError(f"{v!r} is not a CIDR block; use one like 203.0.113.7/32") from None

    @field_validator("ami_id")
    @classmethod
    def _ami(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"ami-[0-9a-f]{8,17}", v):
            raise ValueError(f"{v!r} is not an AMI id; use one like ami-0abcdef1234567890")
        return v

    @field_validator("bucket_name", "state_bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is not None and (
            not _BUCKET_RE.match(v) or ".." in v or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", v)
        ):
            raise ValueError(
                f"{v!r} is not a valid S3 bucket name; use 3-63 lowercase letters, digits, '-' or '.'"
            )
        return v

    @field_validator("nightly_teardown_cron", "backup_cron")
    @classmethod
    def _cron(cls, v: str, info) -> str:
        if not v:
            return v
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=v)  # the schedule the control plane will be given
            valid = len(v.split()) == 5
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"{v!r} is not a 5-field cron expression; use one like '0 3 * * *', or '' for none")
        if info.field_name == "backup_cron":
            from stack.oncalendar import CalendarError, on_calendar

            try:  # the server host's backup timer runs on it (systemd's calendar)
                on_calendar(v, "UTC")
            except CalendarError as exc:
                raise ValueError(f"{exc}; the backup runs on a systemd timer on the server host") from None
        return v

    @field_validator("schedule_timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone; use an IANA name like UTC or Europe/Madrid") from None
        return v

    @field_validator("prefect_version")
    @classmethod
    def _prefect_version(cls, v: str | None) -> str:
        from stack import pins

        if v is None or not v.strip():
            return pins.pinned_prefect()
        v = v.strip()
        if not re.fullmatch(r"\d+\.\d+\.\d+", v):
            raise ValueError(f"{v!r} is not a Prefect release; use one like {pins.pinned_prefect()}")
        if v != pins.pinned_prefect() and not pins.lock_file(v).exists():
            raise ValueError(
                f"no lock for Prefect {v} ({pins.lock_file(v).relative_to(REPO_ROOT)}); run bin/lock-prefect {v}, "
                f"commit the file, and run again (or unset STACK_PREFECT_VERSION for {pins.pinned_prefect()})"
            )
        return v

    @field_validator("availability_zone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z]{2}(-gov)?-[a-z]+-\d[a-z]", v):
            raise ValueError(f"{v!r} is not an availability zone; use one like us-east-1a")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "StackSettings":
        if self.operator_cidr is None and self.target == "aws":
            raise ValueError(
                "operator_cidr: required when target is aws; set STACK_OPERATOR_CIDR to your public IP, e.g. 203.0.113.7/32"
            )
        if self.effective_operator_cidr in ("0.0.0.0/0", "::/0") and not self.allow_public_api:
            raise ValueError(
                "operator_cidr: 0.0.0.0/0 opens the Prefect API to the whole internet; narrow it, or set STACK_ALLOW_PUBLIC_API=true to accept that"
            )
        if self.ami_id is None and self.target == "aws":
            raise ValueError(
                "ami_id: required when target is aws; set STACK_AMI_ID to a Debian or Ubuntu AMI of your region"
            )
        if self.availability_zone and not self.availability_zone.startswith(self.region):
            raise ValueError(
                f"availability_zone: {self.availability_zone} is not in region {self.region}; use one like {self.region}a"
            )
        if self.target == "aws" and self.flow_runner_build == "operator" and not self.flow_runner_image:
            raise ValueError(
                "flow_runner_build: on aws the stack builds the flow-runner image on a worker host (this machine "
                "needs no Docker engine); unset STACK_FLOW_RUNNER_BUILD, or name your own image in "
                "STACK_FLOW_RUNNER_IMAGE"
            )
        if self.target == "aws" and self.bake == "container" and self.host_image == "baked":
            raise ValueError(
                "bake: on aws the baked host image is an AMI (a container image boots no EC2 instance); unset "
                "STACK_BAKE, or set STACK_HOST_IMAGE=stock to boot STACK_AMI_ID as it is"
            )
        if self.target == "local" and self.ssh_user != "admin":
            raise ValueError(
                f"ssh_user: the emulated hosts' login user is admin (cloud-init's default user in their image), "
                f"not {self.ssh_user}; unset STACK_SSH_USER, or set it for the aws target only"
            )
        if self.safety_stop and self.nightly_teardown_cron:
            from stack.oncalendar import CalendarError, shifted_cron

            try:
                shifted_cron(self.nightly_teardown_cron, self.teardown_grace_minutes)
            except CalendarError as exc:
                raise ValueError(f"nightly_teardown_cron: {exc}; simplify STACK_NIGHTLY_TEARDOWN_CRON, or set "
                                 "STACK_SAFETY_STOP=false to run without the hosts' own stop") from None
            if self.teardown_grace_minutes >= 24 * 60:
                raise ValueError("teardown_grace_minutes: the hosts' safety stop would fall on the next night's "
                                 "teardown; use fewer than 1440 minutes, or set STACK_SAFETY_STOP=false")
        ports = {"emulator_port": self.emulator_port, "control_plane_port": self.control_plane_port,
                 "platform_port": self.platform_port}
        if self.server_count > 1:  # the balancer's port is used only then
            ports["load_balancer_port"] = self.load_balancer_port
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports: emulator, control-plane, platform and load-balancer ports must differ, got {ports}")
        return self

    # --- derived values ---------------------------------------------------------------
    @property
    def effective_flow_runner_build(self) -> str:
        return self.flow_runner_build or ("operator" if self.target == "local" else "host")

    @property
    def effective_bake(self) -> str | None:
        """How the hosts' baked image is made (``ami`` or ``container``); None when hosts
        boot the stock image (STACK_HOST_IMAGE=stock)."""
        if self.host_image == "stock":
            return None
        return self.bake or ("container" if self.target == "local" else "ami")

    @property
    def effective_operator_cidr(self) -> str:
        return self.operator_cidr or "127.0.0.1/32"

    @property
    def effective_ami_id(self) -> str:
        return self.ami_id or EMULATOR_DEFAULT_AMI

    @property
    def effective_availability_zone(self) -> str:
        return self.availability_zone or f"{self.region}a"

    @property
    def data_volume_name(self) -> str:
        """Name tag of the platform database's EBS volume (and, on local, of the named
        Docker volume that stands in for it: the emulator forgets ids, not names)."""
        return f"{self.name_prefix}-platform-data"

    @property
    def state_path(self) -> Path:
        """The state directory as an absolute path (relative paths are from the repo root)."""
        p = self.state_dir if self.state_dir.is_absolute() else REPO_ROOT / self.state_dir
        return p.resolve()

    @property
    def emulator_endpoint(self) -> str | None:
        """The AWS endpoint the operator uses; None means real AWS."""
        return f"http://127.0.0.1:{self.emulator_port}" if self.target == "local" else None

    @property
    def control_plane_api_url(self) -> str:
        return f"http://127.0.0.1:{self.control_plane_port}/api"

    @property
    def docker_network(self) -> str:
        return f"{self.name_prefix}-net"

    def host_name(self, index: int) -> str:
        return f"{self.name_prefix}-ec2-{index}"

    @property
    def multi_server(self) -> bool:
        """Prefect's multi-server mode: API hosts behind a load balancer, Redis."""
        return self.server_count > 1

    @property
    def load_balancer_name(self) -> str:
        """Name of the API's load balancer (and, on local, of the container that is it)."""
        return f"{self.name_prefix}-api"

    def aws_env(self) -> dict[str, str]:
        """Environment for AWS clients (boto3, terraform, ansible) of this target."""
        env = {"AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        if self.target == "local":
            env |= {
                "AWS_ACCESS_KEY_ID": EMULATOR_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": EMULATOR_SECRET_KEY,
                "AWS_ENDPOINT_URL": self.emulator_endpoint or "",
            }
        return env


def _env_name(loc: tuple) -> str:
    field = str(loc[0]) if loc else ""
    return f"{ENV_PREFIX}{field.upper()}" if field else "settings"


def config_file() -> Path:
    return Path(os.environ.get(f"{ENV_PREFIX}CONFIG_FILE", "stack.toml"))


def _check_config_file() -> None:
    """A stack.toml that does not parse, or names a setting that does not exist (a typo
    would otherwise be ignored silently), is an error naming the file and line or key."""
    import tomllib

    path = config_file()
    if not path.is_file():
        return
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}; fix the TOML (key = \"value\" lines) and run again") from None
    unknown = sorted(set(data) - set(StackSettings.model_fields) - set(RENAMED))
    if unknown:
        raise SettingsError(f"{path}: unknown setting {unknown[0]!r}; the settings are listed in the README "
                            "(lower case, without STACK_)")


# Settings renamed: the old name is still read (with a warning) when the new one is not set.
RENAMED = {"nightly_teardown_timezone": "schedule_timezone"}


def _renamed_settings(overrides: dict) -> dict:
    """Values given under a setting's old name (environment or stack.toml), as overrides
    of its new name, each with a warning that names both."""
    import tomllib

    path = config_file()
    toml = tomllib.loads(path.read_text()) if path.is_file() else {}
    found = {}
    for old, new in RENAMED.items():
        old_env, new_env = f"{ENV_PREFIX}{old.upper()}", f"{ENV_PREFIX}{new.upper()}"
        value = os.environ.get(old_env, toml.get(old))
        if value is None or new in overrides or new_env in os.environ or new in toml:
            continue
        logging.getLogger("stack").warning("setting %s is now called %s (%s in stack.toml); the old name is "
                                           "still read, rename it", old_env, new_env, new)
        found[new] = value
    return found


def load_settings(**overrides) -> StackSettings:
    """Read and validate the settings; raise SettingsError with one line per problem."""
    _check_config_file()
    overrides = {**_renamed_settings(overrides), **overrides}
    try:
        return StackSettings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["loc"]:
                got = err.get("input")
                lines.append(f"setting {_env_name(err['loc'])}={got!r}: {msg}")
            else:  # cross-field checks name their setting themselves
                field, _, rest = msg.partition(": ")
                lines.append(f"setting {_env_name((field,))}: {rest or msg}")
        raise SettingsError("\n".join(lines)) from None
