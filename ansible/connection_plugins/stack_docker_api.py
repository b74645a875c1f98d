# A docker_api connection that survives the lost output of one exec (see DOCUMENTATION).
# Options are docker_api's, copied from community.docker 5.4.0 (ansible-doc reads them
# from this file, so they cannot be imported).
from __future__ import annotations

DOCUMENTATION = r"""
author:
  - Felix Fontein (@felixfontein), community.docker.docker_api, which this subclasses
name: stack_docker_api
short_description: community.docker.docker_api, with a retry of the exec that reads the user's ids
description:
  - community.docker.docker_api (same options), for the stack's host containers.
  - Before it copies a file, docker_api reads the connection user's ids with one exec, and under load that exec's
    output sometimes comes back empty; docker_api then reports the host unreachable. This plugin tries that exec
    again.
  - Uses the L(requests library,https://pypi.org/project/requests/) to interact directly with the Docker daemon instead of
    using the Docker CLI. Use the P(community.docker.docker#connection) connection plugin if you want to use the Docker CLI.
notes:
  - Does B(not work with TCP TLS sockets)! This is caused by the inability to send C(close_notify) without closing the connection
    with Python's C(SSLSocket)s. See U(https://github.com/ansible-collections/community.docker/issues/605) for more information.
extends_documentation_fragment:
  - community.docker._docker.api_documentation
  - community.docker._docker.api_environment_documentation
  - community.docker._docker.var_names
options:
  remote_user:
    type: str
    description:
      - The user to execute as inside the container.
    vars:
      - name: ansible_user
      - name: ansible_docker_user
    ini:
      - section: defaults
        key: remote_user
    env:
      - name: ANSIBLE_REMOTE_USER
    cli:
      - name: user
    keyword:
      - name: remote_user
  remote_addr:
    type: str
    description:
      - The name of the container you want to access.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_docker_host
  container_timeout:
    default: 10
    description:
      - Controls how long we can wait to access reading output from the container once execution started.
    env:
      - name: ANSIBLE_TIMEOUT
      - name: ANSIBLE_DOCKER_TIMEOUT
        version_added: 2.2.0
    ini:
      - key: timeout
        section: defaults
      - key: timeout
        section: docker_connection
        version_added: 2.2.0
    vars:
      - name: ansible_docker_timeout
        version_added: 2.2.0
    cli:
      - name: timeout
    type: integer
  extra_env:
    description:
      - Provide extra environment variables to set when running commands in the Docker container.
      - This option can currently only be provided as Ansible variables due to limitations of ansible-core's configuration
        manager.
    vars:
      - name: ansible_docker_extra_env
    type: dict
    version_added: 3.12.0
  working_dir:
    description:
      - The directory inside the container to run commands in.
      - Requires Docker API version 1.35 or later.
    env:
      - name: ANSIBLE_DOCKER_WORKING_DIR
    ini:
      - key: working_dir
        section: docker_connection
    vars:
      - name: ansible_docker_working_dir
    type: string
    version_added: 3.12.0
  privileged:
    description:
      - Whether commands should be run with extended privileges.
      - B(Note) that this allows command to potentially break out of the container. Use with care!
    env:
      - name: ANSIBLE_DOCKER_PRIVILEGED
    ini:
      - key: privileged
        section: docker_connection
    vars:
      - name: ansible_docker_privileged
    type: boolean
    default: false
    version_added: 3.12.0
"""

import time

from ansible.utils.display import Display

from ansible_collections.community.docker.plugins.connection.docker_api import Connection as DockerApiConnection

display = Display()

ID_ATTEMPTS = 4


class Connection(DockerApiConnection):
    transport = "stack_docker_api"

    def put_file(self, in_path: str, out_path: str) -> None:
        # docker_api runs `id -u && id -g` once per connection before a copy, and fails the
        # host when the output is empty: a lost output (seen under load with Docker 20.10),
        # not an answer. Read the ids here, with retries, into the cache it then uses.
        self._connect()
        for attempt in range(1, ID_ATTEMPTS + 1):
            if self.actual_user in self.ids:
                break
            _rc, out, _err = self.exec_command("id -u && id -g")
            fields = out.split()
            if len(fields) == 2 and all(f.isdigit() for f in fields):
                self.ids[self.actual_user] = int(fields[0]), int(fields[1])
                break
            display.vvv(f"PUT: no ids from `id -u && id -g` (attempt {attempt} of {ID_ATTEMPTS}): {out!r}",
                        host=self.get_option("remote_addr"))
            time.sleep(0.2 * attempt)
        super().put_file(in_path, out_path)
