#!/opt/prefect/venv/bin/python
"""The platform database's backup, run on the server host by prefect-backup.service (its
timer at night, or the operator's backup before a teardown): pg_dump streamed to
s3://$BACKUP_BUCKET/backups/<name> with the host's own credentials (the instance role on
aws), no operator machine involved. What it wrote goes to $STATE_DIRECTORY/last.json."""

import datetime as dt
import json
import os
import subprocess
import sys

import boto3


class Counting:
    """pg_dump's stdout as upload_fileobj reads it, counting the bytes."""

    def __init__(self, source):
        self.source, self.size = source, 0

    def read(self, n=-1):
        chunk = self.source.read(n)
        self.size += len(chunk)
        return chunk


def main() -> int:
    bucket, prefix = os.environ["BACKUP_BUCKET"], os.environ["BACKUP_NAME_PREFIX"]
    now = dt.datetime.now(dt.timezone.utc)
    label = os.environ.get("BACKUP_LABEL", "")  # safety-stop: the host's own stop took it
    name = f"{prefix}-platform-{now:%Y%m%dT%H%M%SZ}" + (f"-{label}" if label else "") + ".dump"
    key = f"backups/{name}"
    dump = subprocess.Popen(["pg_dump", "--format=custom", os.environ.get("BACKUP_DATABASE", "prefect")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    s3 = boto3.client("s3")  # AWS_ENDPOINT_URL names the emulated cloud on local
    body = Counting(dump.stdout)
    s3.upload_fileobj(body, bucket, key, ExtraArgs={"ServerSideEncryption": "AES256"})
    err = dump.stderr.read().decode(errors="replace").strip()
    if dump.wait() != 0 or body.size == 0:
        s3.delete_object(Bucket=bucket, Key=key)
        print(f"pg_dump failed (exit {dump.returncode}): {err or 'no output'}", file=sys.stderr)
        return 1
    last = {"name": name, "time": now.isoformat(), "size": body.size, "location": f"s3://{bucket}/{key}"}
    state = os.environ.get("STATE_DIRECTORY", "/var/lib/prefect-backup")
    with open(f"{state}/last.json.tmp", "w") as f:
        json.dump(last, f)
    os.replace(f"{state}/last.json.tmp", f"{state}/last.json")
    print(f"backup {name}: {body.size} bytes to s3://{bucket}/{key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
