"""AWS credentials for the tools the stack starts, without writing any to disk.

Ansible's aws_ec2 inventory needs AWS credentials, and ansible-runner records the whole
environment of the playbook in its artifacts. So no key goes into that environment, and
none into a file: while a playbook runs, the operator's process serves the credentials
its own chain resolves (SSO, a profile, environment variables, a role; on local the
emulated cloud's fixed keys) on a Unix socket in a private temporary folder, and the
playbook's AWS SDK gets them through a profile whose ``credential_process`` asks that
socket (stack/credential_process.py). Each ask resolves them again, so expiring SSO or
STS credentials are refreshed, and nothing is left behind when the playbook ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socketserver
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from stack.proc import get_logger
from stack.settings import EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY, StackSettings

SOCKET_ENV = "STACK_CREDENTIALS_SOCKET"
PROFILE = "stack"
PROCESS = Path(__file__).with_name("credential_process.py")


def resolve(settings: StackSettings) -> dict:
    """The credentials of this target as the SDK's credential_process format (Version 1)."""
    if settings.target == "local":
        return {"Version": 1, "AccessKeyId": EMULATOR_ACCESS_KEY, "SecretAccessKey": EMULATOR_SECRET_KEY}
    import boto3

    creds = boto3.Session(region_name=settings.region).get_credentials()
    if creds is None:
        raise RuntimeError("no AWS credentials found; configure them (aws configure / AWS_PROFILE)")
    frozen = creds.get_frozen_credentials()
    out = {"Version": 1, "AccessKeyId": frozen.access_key, "SecretAccessKey": frozen.secret_key}
    if frozen.token:
        out["SessionToken"] = frozen.token
    return out


@contextlib.contextmanager
def served(settings: StackSettings) -> Iterator[dict[str, str]]:
    """Serve this target's credentials while the block runs; yields the environment that
    points a tool's AWS SDK at them (holding no key)."""
    legacy = settings.state_path / "aws" / "credentials"
    if legacy.exists():
        # An older version wrote the resolved keys here for Ansible: no file holds them now.
        legacy.unlink()
        get_logger().warning("removed %s: an older version of the stack kept AWS keys there", legacy)
    folder = Path(tempfile.mkdtemp(prefix="stack-aws-"))  # 0700, this user only
    sock = folder / "credentials.sock"

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                self.wfile.write(json.dumps(resolve(settings)).encode())
            except Exception as exc:  # noqa: BLE001  (the SDK reports an empty answer as an error)
                print(f"stack credentials: {exc}", file=sys.stderr)

    server = socketserver.ThreadingUnixStreamServer(str(sock), Handler)
    os.chmod(sock, 0o600)
    thread = threading.Thread(target=server.serve_forever, name="aws-credentials", daemon=True)
    thread.start()
    config = folder / "config"
    config.write_text(f"[profile {PROFILE}]\nregion = {settings.region}\n"
                      f"credential_process = {sys.executable} {PROCESS}\n")
    try:
        yield {"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": PROFILE, SOCKET_ENV: str(sock),
               # Only the profile above: no credentials file of the operator's.
               "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)
