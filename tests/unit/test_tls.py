"""The stack's CA and server certificate (stack/tls.py): private keys 0600, names that
match the addresses clients use, re-issued when those change, and a real TLS handshake
that verifies with the CA and fails without it."""

from __future__ import annotations

import http.server
import ssl
import stat
import threading

import pytest

from stack import accountsecrets, platform, tls
from stack.settings import StackSettings


@pytest.fixture
def settings(tmp_path):
    return StackSettings(state_dir=tmp_path / "state", name_prefix="tlstest")


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_private_and_the_ca_is_made_once(settings):
    names = tls.server_names(settings)
    assert tls.ensure_ca(settings, create=True) is True  # made once (platform.make_stack_secrets)
    assert tls.ensure_server_certificate(settings, names) is True
    d = tls.tls_dir(settings)
    assert _mode(d) == 0o700
    assert _mode(d / tls.CA_KEY) == 0o600 and _mode(d / tls.SERVER_KEY) == 0o600
    before = tls.ca_fingerprint(settings)
    assert tls.ensure_ca(settings) is False
    assert tls.ensure_server_certificate(settings, names) is False   # current: not re-issued
    assert tls.ca_fingerprint(settings) == before


def test_server_names_cover_every_address_clients_use(settings):
    assert tls.server_names(settings) == ["tlstest-ec2-0", "localhost", "127.0.0.1"]
    aws = settings.model_copy(update={"target": "aws"})
    names = tls.server_names(aws, {"private_ip": "10.0.1.5", "public_ip": "198.51.100.7"})
    assert names[-2:] == ["10.0.1.5", "198.51.100.7"]


def test_a_new_address_or_a_new_ca_reissues_the_certificate(settings):
    names = tls.server_names(settings)
    tls.ensure_ca(settings, create=True)
    tls.ensure_server_certificate(settings, names)
    assert tls.server_certificate_current(settings, names)
    moved = names + ["198.51.100.8"]
    assert not tls.server_certificate_current(settings, moved)
    assert tls.ensure_server_certificate(settings, moved) is True
    # A deleted cache loses nothing: the CA comes back from the account.
    before = tls.ca_fingerprint(settings)
    (tls.tls_dir(settings) / tls.CA_KEY).unlink()
    (tls.tls_dir(settings) / tls.CA_CERT).unlink()
    assert tls.ensure_ca(settings) is False
    assert tls.ca_fingerprint(settings) == before and tls.server_certificate_current(settings, moved)
    # A lost CA (gone from the account too): a new one is made and the server
    # certificate is signed again by it.
    accountsecrets.delete_all(settings, (tls.CA_KEY_SECRET, tls.CA_CERT_SECRET))
    (tls.tls_dir(settings) / tls.CA_KEY).unlink()
    (tls.tls_dir(settings) / tls.CA_CERT).unlink()
    assert tls.ensure_ca(settings, create=True) is True  # the next bootstrap makes a new one
    assert not tls.server_certificate_current(settings, moved)
    assert tls.ensure_server_certificate(settings, moved) is True


@pytest.fixture
def https_server(settings):
    """A real HTTPS server on loopback with the stack's server certificate (a stack whose
    secrets are made)."""
    platform.make_stack_secrets(settings)
    tls.ensure_server_certificate(settings, tls.server_names(settings))
    d = tls.tls_dir(settings)

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / tls.SERVER_CERT, d / tls.SERVER_KEY)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_clients_verify_the_server_with_the_ca_and_fail_without_it(settings, https_server):
    assert platform.get(f"{https_server}/api/ready", context=tls.ssl_context(settings)) == 200
    # The system's trust store does not know the stack's CA: verification fails.
    assert platform.get(f"{https_server}/api/ready", context=ssl.create_default_context()) == 0


def test_the_platforms_prefect_client_trusts_the_ca(settings, https_server):
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def health(client):
        async with client:
            return await client.api_healthcheck()

    url = f"{https_server}/api"
    assert asyncio.run(health(platform.prefect_client(settings, url))) is None  # None: it answered
    without_ca = PrefectClient(api=url, httpx_settings={"verify": ssl.create_default_context()})
    assert "CERTIFICATE_VERIFY_FAILED" in str(asyncio.run(health(without_ca)))


def test_the_stacks_secrets_live_in_the_account_and_the_files_are_caches(settings, secrets_manager):
    """Deleting the state directory loses no secret; a stack made before keeps its own
    (its files go up once); a second clone gets the same values."""
    from stack.terraform import ssh_key_file, ssh_public_key

    platform.make_stack_secrets(settings)
    auth, public_key = platform.auth_string(settings), ssh_public_key(settings)
    ca = tls.ca_fingerprint(settings)
    assert set(secrets_manager.secrets) == {f"tlstest/{n}" for n in (
        platform.AUTH_SECRET, "ssh-private-key", tls.CA_KEY_SECRET, tls.CA_CERT_SECRET)}
    for cache in (platform.auth_file(settings), ssh_key_file(settings), tls.tls_dir(settings) / tls.CA_KEY):
        assert _mode(cache) == 0o600

    second_clone = settings.model_copy(update={"state_dir": settings.state_dir.parent / "clone"})
    accountsecrets._read.clear()  # another process
    assert platform.auth_string(second_clone) == auth and ssh_public_key(second_clone) == public_key
    tls.ensure_ca(second_clone)  # a read: the account's CA, cached
    assert tls.ca_fingerprint(second_clone) == ca

    # A stack made before this change: its files, no secret in the account.
    older = settings.model_copy(update={"name_prefix": "older", "state_dir": settings.state_dir.parent / "older"})
    platform.auth_file(older).parent.mkdir(parents=True)
    platform.auth_file(older).write_text("prefect:kept-from-before")
    assert platform.auth_string(older) == "prefect:kept-from-before"
    assert secrets_manager.secrets["older/platform-auth"] == "prefect:kept-from-before"


def test_reading_a_secret_or_computing_a_key_makes_nothing(settings, secrets_manager):
    """A read of a secret not made yet says which command makes it; the configure step's
    key is computed from the caches alone, before and after the secrets are made."""
    from stack import steps
    from stack.proc import StackError
    from stack.terraform import ssh_public_key

    for read in (lambda: platform.auth_string(settings), lambda: ssh_public_key(settings),
                 lambda: tls.ensure_ca(settings)):
        with pytest.raises(StackError, match="does not exist yet .*python -m flows.bootstrap makes it"):
            read()
    key_before = steps.step_key("configure", settings, values={})
    assert secrets_manager.secrets == {} and not platform.auth_file(settings).exists()
    assert not tls.ca_file(settings).exists()
    platform.make_stack_secrets(settings)
    assert len(secrets_manager.secrets) == 4
    assert steps.step_key("configure", settings, values={}) != key_before  # the new secrets reach the hosts
