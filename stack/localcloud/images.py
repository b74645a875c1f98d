"""Local image builder: a Debian base image made from packages, and images on top of it,
each tagged by a hash of what it is built from so an unchanged image is never rebuilt.

No registry is reachable on the machines this runs on, so the base image comes from
``mmdebstrap --variant=minbase`` streamed into ``docker import`` (about 20 s, once). Every other
image is a folder under ``stack/localcloud/images/<name>/`` with a Dockerfile that starts
``FROM ${BASE}``; the build context also gets, when its Dockerfile names them, the
host's CA bundle (``host-ca.crt``, so pip and apt work behind an intercepting proxy), the
project's ``constraints.txt`` and the pinned uv binary (``uv-bin``).
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

import docker
import docker.errors

from stack.proc import StackError, get_logger
from stack.settings import REPO_ROOT

IMAGES_DIR = Path(__file__).parent / "images"
BASE_REPO = "stack-base"
DEBIAN_SUITE = "bookworm"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Packages every image needs; more are added by each image's Dockerfile (python3 costs
# 12 s more in the base image's build, which every image waits for, and 6 s in an apt step).
BASE_PACKAGES = ["ca-certificates"]
# Slim like Debian's own container images: no manuals, translations or docs (the
# copyright files stay), and apt does not keep the packages it installed. mmdebstrap
# writes these into the image's dpkg and apt configuration, so every image built on the
# base (hosts, the bake, the flow-runner image) stays slim; each Dockerfile's apt step
# also drops apt's binary caches (78 MB). The flow-runner image shrank by a fifth (576 to
# 446 MB), and each worker host pulls it. (apt configured without binary
# caches, as in Debian's images, rebuilds them in memory at every call: the bake's first
# apt task took 21 s instead of 14 to 15.)
BASE_DPKG_OPTIONS = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
]
BASE_APT_OPTIONS = ['APT::Keep-Downloaded-Packages "false"']
HOST_CA_CANDIDATES = [
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
]


# One build of an image at a time in this process: bootstrap builds images in the
# background while provision runs, and the step that needs one then waits for it.
_build_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def build_lock(tag: str) -> threading.Lock:
    return _build_locks[tag]


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise StackError(f"no Docker engine answers ({exc}); run bin/setup to install and start one") from None


def host_ca_bundle() -> Path:
    for p in HOST_CA_CANDIDATES:
        if p.exists():
            return p
    raise StackError("no CA bundle found at " + ", ".join(map(str, HOST_CA_CANDIDATES)))


def uv_binary() -> Path:
    """The uv every image installs its Python packages with: the operator venv's, which
    bin/setup installed at the version constraints.txt pins (the hosts' venv uses that pin
    too), so images and venvs resolve alike. Copied into an image's build context, it
    spares the image python3-venv, pip, and pip's download of uv."""
    import uv

    return Path(uv.find_uv_bin())


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _hash_tree(h: "hashlib._Hash", root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())


def base_image_tag(mirror: str = DEFAULT_DEBIAN_MIRROR) -> str:
    """The content-hash tag of the Debian base image (suite, packages, mirror, CA bundle)."""
    key = hashlib.sha256(f"{DEBIAN_SUITE}|minbase|{','.join(BASE_PACKAGES)}|{mirror}".encode())
    key.update("|".join(BASE_DPKG_OPTIONS + BASE_APT_OPTIONS).encode())
    key.update(host_ca_bundle().read_bytes())
    return f"{BASE_REPO}:{DEBIAN_SUITE}-{key.hexdigest()[:12]}"


def ensure_base_image(client: docker.DockerClient, mirror: str = DEFAULT_DEBIAN_MIRROR) -> str:
    """Return the tag of the Debian base image, building it with mmdebstrap if missing."""
    tag = base_image_tag(mirror)
    with build_lock(tag):
        _ensure_base_image(client, tag, mirror)
    note_current(tag)
    return tag


def _ensure_base_image(client: docker.DockerClient, tag: str, mirror: str) -> str:
    if image_exists(client, tag):
        return tag
    if not shutil.which("mmdebstrap"):
        raise StackError("mmdebstrap is missing and the Debian base image is not built; run bin/setup")
    log = get_logger()
    log.info("building base image %s with mmdebstrap (about 20 s, once)", tag)
    # mmdebstrap (apt's parallel downloads; 20 s here against debootstrap's 33 s) writes
    # the root file system as a tar to stdout, which docker import reads: no folder on
    # disk. It verifies the packages with the archive keyring and leaves no package
    # files or lists behind. The host's CA bundle goes in so that TLS through an
    # intercepting proxy verifies inside every image.
    with tempfile.TemporaryFile() as build_log:  # a file, not a pipe: no deadlock on a full pipe
        build = subprocess.Popen(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             *(f"--dpkgopt={o}" for o in BASE_DPKG_OPTIONS),
             # Into the image only: mmdebstrap itself installs from apt's downloaded packages.
             # No binary cache is left behind either.
             "--customize-hook=printf '%s;\\n' " + " ".join(shlex.quote(o) for o in BASE_APT_OPTIONS)
             + ' > "$1/etc/apt/apt.conf.d/90slim-image" && rm -f "$1"/var/cache/apt/*.bin',
             f"--customize-hook=upload {host_ca_bundle()} /usr/local/share/ca-certificates/host-ca.crt",
             '--customize-hook=chroot "$1" update-ca-certificates',
             DEBIAN_SUITE, "-", mirror],
            stdout=subprocess.PIPE, stderr=build_log)
        imp = subprocess.run(["docker", "import", "-", tag], stdin=build.stdout, capture_output=True)
        build.stdout.close()
        built = build.wait() == 0
        build_log.seek(0)
        build_err = build_log.read().decode(errors="replace").strip()
    import_err = imp.stderr.decode(errors="replace").strip()
    if imp.returncode != 0:
        # mmdebstrap then fails too, on its closed pipe: the import's message says why.
        raise StackError(f"`docker import` of the base image failed: {import_err}")
    if not built:
        client.images.remove(tag, force=True)  # a partial root file system: never keep it
        # Its first error says why (e.g. "Failed to fetch ..."); the last only that it failed.
        errors = [line for line in build_err.splitlines() if line.startswith("E: ")] or build_err.splitlines()
        raise StackError(f"mmdebstrap could not build the Debian base image from {mirror}: "
                         f"{errors[0] if errors else 'no message'}")
    return tag


# Files the builder can add to an image's build context; each goes in (and into the
# image's tag) only when that image's Dockerfile uses it, so a changed pin does not
# change the tag of an image that holds no pins.
CONTEXT_EXTRAS = {
    "constraints.txt": lambda: REPO_ROOT / "constraints.txt",
    "host-ca.crt": host_ca_bundle,
    "uv-bin": uv_binary,
}


def _context_extras(name: str, files: dict[str, Path] | None = None) -> dict[str, Path]:
    """The extras image ``name``'s Dockerfile uses; ``files`` replaces some of their
    sources (the flow-runner's constraints.txt is the lock of STACK_PREFECT_VERSION)."""
    dockerfile = (IMAGES_DIR / name / "Dockerfile").read_text()
    sources = {f: source() for f, source in CONTEXT_EXTRAS.items() if f in dockerfile}
    return sources | {f: path for f, path in (files or {}).items() if f in sources}


def image_tag(name: str, base: str | None = None, build_args: dict[str, str] | None = None,
              files: dict[str, Path] | None = None) -> str:
    """The content-hash tag of image ``name`` built on ``base`` with ``build_args`` and
    ``files`` (see _context_extras): it hashes only what goes into that image."""
    h = hashlib.sha256((base or base_image_tag()).encode())
    _hash_tree(h, IMAGES_DIR / name)
    for extra, path in sorted(_context_extras(name, files).items()):
        h.update(extra.encode() + path.read_bytes())
    for k, v in sorted((build_args or {}).items()):
        h.update(f"{k}={v}".encode())
    return f"stack-{name}:{h.hexdigest()[:12]}"


def ensure_image(client: docker.DockerClient, name: str, build_args: dict[str, str] | None = None,
                 files: dict[str, Path] | None = None) -> str:
    """Build ``stack/localcloud/images/<name>`` on the base image unless already built."""
    base = ensure_base_image(client)
    tag = image_tag(name, base, build_args, files)
    with build_lock(tag):
        if not image_exists(client, tag):
            _build(client, name, tag, base, build_args, files)
    note_current(tag)
    return tag


# The tag of each image repository that this process built or found current; bootstrap
# removes the other tags once it has succeeded (not right after a build, where deleting
# a 1.8 GB image's layers slowed the configure running beside it).
_current_tags: dict[str, str] = {}


def note_current(tag: str) -> None:
    _current_tags[tag.split(":")[0]] = tag


def remove_superseded_images() -> list[str]:
    """Remove the earlier images of every repository whose current tag this process
    ensured, when no container uses them."""
    if not _current_tags:
        return []
    client = docker_client()
    return [t for tag in list(_current_tags.values()) for t in remove_older_images(client, tag)]


def remove_older_images(client: docker.DockerClient, tag: str) -> list[str]:
    """Remove the other tags of ``tag``'s repository (earlier builds, up to 1.8 GB each for
    a baked host image) that no container uses; an image a container still runs, or
    that another image is built on, stays. Returns the tags removed."""
    repo = tag.split(":")[0]
    in_use = {c.image.id for c in client.containers.list(all=True) if c.image is not None}
    removed = []
    for image in client.images.list(name=repo):
        older = [t for t in image.tags if t.split(":")[0] == repo and t != tag]
        if not older or tag in image.tags or image.id in in_use:
            continue
        for t in older:
            try:
                client.images.remove(t, noprune=False)
                removed.append(t)
            except docker.errors.APIError:  # a child image or a container still needs it
                pass
    if removed:
        get_logger().info("removed earlier images no container uses: %s", ", ".join(removed))
    return removed


def _build(client: docker.DockerClient, name: str, tag: str, base: str, build_args: dict[str, str] | None,
           files: dict[str, Path] | None = None) -> None:
    log = get_logger()
    log.info("building image %s", tag)
    with tempfile.TemporaryDirectory(prefix=f"stack-ctx-{name}-") as ctx:
        shutil.copytree(IMAGES_DIR / name, ctx, dirs_exist_ok=True)
        for extra, path in _context_extras(name, files).items():
            shutil.copy(path, Path(ctx, extra))
        args = {"BASE": base, **(build_args or {})}
        try:
            _, stream = client.images.build(path=ctx, tag=tag, buildargs=args, rm=True, forcerm=True)
            for chunk in stream:
                if "stream" in chunk and chunk["stream"].strip():
                    log.debug("%s", chunk["stream"].rstrip())
        except docker.errors.BuildError as exc:
            tail = "".join(c.get("stream", "") for c in list(exc.build_log)[-15:])
            raise StackError(f"building image {name} failed: {exc.msg}\n{tail}") from None
