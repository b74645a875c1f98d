"""TLS of the platform: a certificate authority the stack generates once into
``<state>/tls`` and the server certificate it signs for the server host's reverse proxy.

Clients verify the platform with ``ca.pem`` (``PREFECT_API_SSL_CERT_FILE``): the operator's
Prefect clients, the workers and their flow runs. The keys are written 0600 and never
logged; the CA key never leaves the operator machine (only ``server.key`` goes to the
server host). The server certificate names every address a client uses for the server
(its host name, loopback, and on aws its private and public IPs); configure re-issues it
when those change (a replaced instance has new IPs) or when it nears its end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stack import accountsecrets
from stack.settings import StackSettings

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE_DAYS = 30


def tls_dir(settings: StackSettings) -> Path:
    return settings.state_path / "tls"


def ca_file(settings: StackSettings) -> Path:
    """The CA certificate clients verify the platform with."""
    return tls_dir(settings) / CA_CERT


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


CA_KEY_SECRET, CA_CERT_SECRET = accountsecrets.CA_KEY, accountsecrets.CA_CERT


def ensure_ca(settings: StackSettings, create: bool = False) -> bool:
    """The stack's CA: its key and certificate are secrets in the account (made once),
    cached here. True when the cached CA changed (made now, or another one than the
    cache held): the server certificate it signed is then dropped. Made only with
    ``create`` (platform.make_stack_secrets); a read of a CA not made yet is an error."""
    d = tls_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    cached = (d / CA_CERT).read_text() if (d / CA_CERT).exists() else None
    made = []

    def new_certificate() -> str:
        made.append(True)
        return _new_ca_certificate(settings, key_pem)

    def new_key() -> str:
        return _key_pem(ec.generate_private_key(ec.SECP256R1())).decode()

    key_pem = accountsecrets.stack_secret(settings, CA_KEY_SECRET, d / CA_KEY, new_key if create else None)
    cert_pem = accountsecrets.stack_secret(settings, CA_CERT_SECRET, d / CA_CERT, new_certificate if create else None)
    if made or (cached is not None and cert_pem != cached):
        (d / SERVER_CERT).unlink(missing_ok=True)   # signed by another CA
        return True
    return False


def _new_ca_certificate(settings: StackSettings, key_pem: str) -> str:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{settings.name_prefix} platform CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def server_names(settings: StackSettings, server: dict | None = None) -> list[str]:
    """Every name a client uses for the server: its host name (the workers' URL on
    local), loopback (the operator's published port on local), and on aws the server
    instance's private IP (the workers' URL) and public IP (the operator's URL)."""
    names = [settings.host_name(0), "localhost", "127.0.0.1"]
    if settings.target == "aws" and server:
        names += [ip for ip in (server.get("private_ip"), server.get("public_ip")) if ip]
    return list(dict.fromkeys(names))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _names_of(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)}


def server_certificate_current(settings: StackSettings, names: list[str], stem: str = "server") -> bool:
    """The certificate ``<stem>.pem`` (the platform server's by default) exists, names
    exactly ``names``, is signed by this CA and is not near its end."""
    d = tls_dir(settings)
    if not all((d / f).exists() for f in (CA_CERT, f"{stem}.pem", f"{stem}.key")):
        return False
    cert = x509.load_pem_x509_certificate((d / f"{stem}.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
    try:  # signed by this CA's key (every CA of a stack has the same subject)
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:  # cryptography's InvalidSignature, or another key type
        return False
    return (cert.issuer == ca.subject and _names_of(cert) == set(names)
            and cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS))


def ensure_server_certificate(settings: StackSettings, names: list[str], stem: str = "server") -> bool:
    """Issue a server certificate for ``names``, ``<stem>.pem`` and ``<stem>.key`` in the
    stack's TLS folder (the platform server's by default; the twin's registry has its
    own), unless a current one exists (same names, signed by this CA, not near its end).
    True when it was issued."""
    ensure_ca(settings)
    if server_certificate_current(settings, names, stem):
        return False
    d = tls_dir(settings)
    ca_key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    accountsecrets.write_private(d / f"{stem}.key", _key_pem(key).decode())
    (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def ca_fingerprint(settings: StackSettings) -> str:
    """A hash of the CA certificate (public), for the configure step's key."""
    path = ca_file(settings)
    return hashlib.sha256(path.read_bytes() if path.exists() else b"-").hexdigest()


def ssl_context(settings: StackSettings) -> ssl.SSLContext:
    """A client context that trusts the stack's CA only."""
    if not ca_file(settings).exists():
        ensure_ca(settings)  # the cache was deleted: the CA comes back from the account
    return ssl.create_default_context(cafile=str(ca_file(settings)))
