"""The platform's Prefect version across bootstraps: what it runs, and what a change of
STACK_PREFECT_VERSION means.

The version the platform's database was last migrated to is recorded in the code bucket
(``platform/prefect-version``; the bucket outlives the compute, like the database), and
the running server says its own (``/admin/version``). A higher setting is an upgrade:
configure takes a backup named for the two versions first, installs the new Prefect in
place, and the server migrates the database when it restarts (Prefect's own migrations).
A lower one is refused before anything changes: Prefect's migrations only go forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import Version

from stack import aws, platform
from stack.aws import SettingRefused
from stack.settings import StackSettings

VERSION_KEY = "platform/prefect-version"


@dataclass(frozen=True)
class VersionChange:
    running: str | None     # what the platform runs (None: no platform yet)
    wanted: str             # STACK_PREFECT_VERSION

    @property
    def is_upgrade(self) -> bool:
        return self.running is not None and Version(self.wanted) > Version(self.running)

    @property
    def backup_label(self) -> str:
        return f"pre-upgrade-{self.running}-to-{self.wanted}"

    def describe(self) -> str:
        if self.running is None:
            return f"Prefect {self.wanted} (a new platform)"
        if self.is_upgrade:
            return f"Prefect {self.running} -> {self.wanted}: an upgrade (a backup first, then the new version in place)"
        return f"Prefect {self.wanted} (unchanged)"


def recorded_version(settings: StackSettings) -> str | None:
    """The version recorded by the last configure, or None (no bucket, or no record yet)."""
    try:
        body = aws.client(settings, "s3").get_object(Bucket=settings.effective_bucket_name, Key=VERSION_KEY)["Body"]
        return body.read().decode().strip() or None
    except Exception:  # noqa: BLE001 - NoSuchBucket, NoSuchKey: nothing recorded
        return None


def record_version(settings: StackSettings) -> None:
    """Record the version the platform now runs (configure, once its playbook succeeded)."""
    aws.client(settings, "s3").put_object(Bucket=settings.effective_bucket_name, Key=VERSION_KEY,
                                          Body=settings.prefect_version.encode())


def running_version(settings: StackSettings) -> str | None:
    """What the platform runs: its server's answer when it is up, else the record (after
    the nightly teardown no server runs, but the database on the volume keeps its version)."""
    answered = None
    if any(i["role"] == "server" for i in aws.running_hosts(settings)) and platform.auth_file(settings).exists():
        try:
            answered = platform.server_version(settings, platform.operator_api_url(settings))
        except Exception:  # noqa: BLE001 - not answering: the record says it
            answered = None
    return answered or recorded_version(settings)


def check_version_change(settings: StackSettings) -> VersionChange:
    """The change STACK_PREFECT_VERSION asks for; a downgrade is refused (exit 2), naming
    the rollback when a backup taken before the upgrade exists."""
    change = VersionChange(running_version(settings), settings.prefect_version)
    if change.running is not None and Version(change.wanted) < Version(change.running):
        from stack import backups

        taken = [b.name for b in backups.available(settings, settings.effective_bucket_name)
                 if (backups.upgrade_versions(b.name) or ("",))[0] == change.wanted]
        back = (f"to go back, roll back to the backup taken before the upgrade: STACK_PREFECT_VERSION={change.wanted} "
                f"python -m flows.restore --backup {taken[-1]}" if taken
                else f"no backup taken before an upgrade from {change.wanted} exists to roll back to")
        raise SettingRefused(
            f"prefect_version: the platform runs Prefect {change.running} and its database is migrated to it; "
            f"{change.wanted} is older, and Prefect's migrations only go forward. Set STACK_PREFECT_VERSION="
            f"{change.running} (or newer); {back}"
        )
    return change
