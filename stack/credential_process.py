"""A ``credential_process`` for the AWS SDK inside the tools the stack starts (Ansible's
aws_ec2 inventory and modules): it asks the operator's stack process, over the private
Unix socket named by STACK_CREDENTIALS_SOCKET, for the credentials its own chain resolves
now, and prints them in the SDK's format. Standalone (standard library only): the SDK
runs it with Ansible's working directory. See stack/credentials.py."""

import os
import socket
import sys


def main() -> int:
    path = os.environ.get("STACK_CREDENTIALS_SOCKET")
    if not path:
        print("STACK_CREDENTIALS_SOCKET is not set: run this through the stack", file=sys.stderr)
        return 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    sys.stdout.write(b"".join(chunks).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
