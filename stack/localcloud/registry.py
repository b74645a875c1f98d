"""The twin's stand-in for ECR's registry.

moto emulates ECR's API (the data module's repository, its lifecycle policy, the
authorization token) but stores no image. This container does: Debian's
``docker-registry`` with TLS from the stack's CA, on the stack's network under the
repository's own host name (``<account>.dkr.ecr.<region>.amazonaws.com``), so the worker
hosts pull ``<repository url>:<tag>`` exactly as they do from ECR on aws; they trust the
stack's CA for that name (the docker role). The operator pushes through a
loopback port (Docker treats 127.0.0.0/8 registries as its own, without a CA).

Its images live on a named volume: like ECR's, they outlive the compute and the
emulator; ``teardown --all`` removes them with the rest of the data. Unlike ECR it
enforces neither the repository's immutable tags nor its lifecycle policy (moto keeps
those as settings): it keeps every image pushed, about 450 MB per change of the image.
"""

from __future__ import annotations

import hashlib
import io
import ssl
import tarfile
import time
import urllib.error
import urllib.request

import docker
import docker.errors

from stack import tls
from stack.localcloud.emulator import LABEL_PROJECT, LABEL_ROLE, ensure_network
from stack.localcloud.images import docker_client, ensure_image
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

INNER_PORT = 443
IMAGES_DIR = "/var/lib/docker-registry"  # config.yml's storage root
TLS_DIR = "/etc/docker/registry/tls"
CERT_STEM = "registry"                    # registry.pem and registry.key in the stack's TLS folder
# What a pushed image's manifest may be (an index when the engine pushes several platforms).
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json")


def container_name(settings: StackSettings) -> str:
    return f"{settings.name_prefix}-registry"


def volume_name(settings: StackSettings) -> str:
    return f"{settings.name_prefix}-registry-images"


def registry_host(repository_url: str) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com`` of a repository URL."""
    return repository_url.split("/", 1)[0]


def _running(client: docker.DockerClient, settings: StackSettings, host: str, image: str, cert: str):
    """The registry container when it runs the current image with the current certificate
    under ``host``; None otherwise (it is then made again: its images are on the volume)."""
    try:
        c = client.containers.get(container_name(settings))
    except docker.errors.NotFound:
        return None
    current = (image in (c.image.tags or []) and c.labels.get("stack.registry-host") == host
               and c.labels.get("stack.registry-cert") == cert)
    if not current:
        c.remove(force=True)
        return None
    if c.status != "running":
        try:
            c.start()
        except docker.errors.APIError:  # e.g. its network was removed: made again
            c.remove(force=True)
            return None
        c.reload()
    return c


def _tls_archive(tls_folder) -> bytes:
    """A tar of the folder ``tls/`` with the registry's certificate and key as config.yml
    names them, to extract in TLS_DIR's parent."""
    buf = io.BytesIO()
    folder = TLS_DIR.rsplit("/", 1)[1]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry = tarfile.TarInfo(folder)
        entry.type, entry.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(entry)
        for src, name, mode in ((f"{CERT_STEM}.pem", "cert.pem", 0o644), (f"{CERT_STEM}.key", "key.pem", 0o600)):
            data = (tls_folder / src).read_bytes()
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure(settings: StackSettings, repository_url: str, timeout: float = 60) -> str:
    """Start the registry for ``repository_url``'s host (building its image, issuing its
    certificate) unless it runs; wait until it answers. Returns the operator's push
    endpoint, ``127.0.0.1:<port>``."""
    client = docker_client()
    host = registry_host(repository_url)
    image = ensure_image(client, "registry")
    tls.ensure_server_certificate(settings, [host, "localhost", "127.0.0.1"], stem=CERT_STEM)
    d = tls.tls_dir(settings)
    cert = hashlib.sha256((d / f"{CERT_STEM}.pem").read_bytes()).hexdigest()[:16]
    c = _running(client, settings, host, image, cert)
    if c is None:
        get_logger().info("starting the registry %s (the stand-in for ECR's) as %s", container_name(settings), host)
        net = ensure_network(client, settings)
        _label_volume(client, settings)
        # The certificate and key are copied in, not bind-mounted: the container must start
        # again with the engine (unless-stopped) whatever becomes of this state directory.
        c = client.containers.create(
            image, name=container_name(settings),
            ports={f"{INNER_PORT}/tcp": ("127.0.0.1", None)},  # a free loopback port, read back below
            volumes={volume_name(settings): {"bind": IMAGES_DIR, "mode": "rw"}},
            labels={LABEL_PROJECT: settings.name_prefix, LABEL_ROLE: "registry",
                    "stack.registry-host": host, "stack.registry-cert": cert},
            restart_policy={"Name": "unless-stopped"}, network=net.name,
        )
        c.put_archive(TLS_DIR.rsplit("/", 1)[0], _tls_archive(d))
        net.disconnect(c)
        net.connect(c, aliases=[host])
        c.start()
    endpoint = f"127.0.0.1:{_published_port(c)}"
    _wait_answers(settings, endpoint, timeout)
    return endpoint


def _label_volume(client: docker.DockerClient, settings: StackSettings) -> None:
    """Made before the container, with the stack's label (a volume Docker makes for a
    container has none, and the stack's volumes are found by it)."""
    try:
        client.volumes.get(volume_name(settings))
    except docker.errors.NotFound:
        client.volumes.create(volume_name(settings), labels={LABEL_PROJECT: settings.name_prefix})


def _published_port(c) -> int:
    for _ in range(20):
        c.reload()
        bound = (c.attrs["NetworkSettings"]["Ports"] or {}).get(f"{INNER_PORT}/tcp")
        if bound:
            return int(bound[0]["HostPort"])
        time.sleep(0.25)
    raise StackError(f"the registry {c.name} published no port; see: docker logs {c.name}")


def _context(settings: StackSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca_file(settings)))


def _wait_answers(settings: StackSettings, endpoint: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"https://{endpoint}/v2/", timeout=5, context=_context(settings)):
                return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise StackError(f"the registry at {endpoint} did not answer within {timeout:.0f} s ({last}); "
                     f"see: docker logs {container_name(settings)}")


def has_image(settings: StackSettings, endpoint: str, repository: str, tag: str) -> bool:
    """The registry holds ``repository:tag`` (its manifest answers)."""
    req = urllib.request.Request(
        f"https://{endpoint}/v2/{repository}/manifests/{tag}", method="HEAD",
        headers={"Accept": ", ".join(MANIFEST_TYPES)})
    try:
        with urllib.request.urlopen(req, timeout=10, context=_context(settings)) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise StackError(f"the registry at {endpoint} answered {exc.code} for {repository}:{tag}") from None


def down(settings: StackSettings, with_images: bool = False) -> bool:
    """Remove the registry container; ``with_images``: its volume too. True when
    anything was removed."""
    client = docker_client()
    removed = False
    try:
        client.containers.get(container_name(settings)).remove(force=True)
        removed = True
    except docker.errors.NotFound:
        pass
    if with_images:
        try:
            client.volumes.get(volume_name(settings)).remove(force=True)
            removed = True
        except docker.errors.NotFound:
            pass
    return removed
