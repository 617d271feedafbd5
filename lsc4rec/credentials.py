"""Credentials for the links between cloud, server and devices: a throwaway CA, node keys, client contexts.

Edge boxes reach the SuperLink and the candidate service over networks their owners do not control, so the
deployment runtime runs every link over TLS and admits only the boxes whose keys were registered, as the
README's edge-box recipe does. On one machine there is no certificate to use, so :func:`make_loopback_tls`
mints a private CA and one server certificate for 127.0.0.1, valid for a few days, and :func:`make_node_key`
a key pair per box, in the run folder: the same Flower and uvicorn options then do what they do on real hosts.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from lsc4rec.errors import LSC4RecError
from lsc4rec.protocol import SERVICE_CA_ENV

VALID_DAYS = 7  # longer than any run (a resumed run makes new ones), short for a key left in a folder


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA that clients trust, and the server's certificate and private key it signed."""

    ca: Path
    cert: Path
    key: Path


def make_loopback_tls(folder: Path) -> TLSFiles:
    """A new CA and a certificate for ``127.0.0.1`` and ``localhost`` signed by it, written under ``folder``.

    The CA's private key is never written: nothing can be signed with it after this call returns. The paths
    are absolute, as Flower requires of ``root-certificates`` and as processes started elsewhere need.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def named(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = named("lsc4rec loopback CA")

    def signed(subject: x509.Name, public_key: object, is_ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # back-dated a little, as CAs do
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if not is_ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(signed(ca_name, ca_key.public_key(), True).public_bytes(pem))
    files.cert.write_bytes(signed(named("127.0.0.1"), server_key.public_key(), False).public_bytes(pem))
    _write_private(
        files.key,
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return files


def make_node_key(stem: Path) -> tuple[Path, Path]:
    """A SuperNode's key pair, ``STEM.key`` (private, OpenSSH) and ``STEM.pub``; returns (private, public).

    Flower's SuperNode authentication signs each request with an elliptic-curve key in OpenSSH format, and
    ``flwr supernode register STEM.pub`` is what admits the box holding the private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private, public = (stem.resolve().with_suffix(suffix) for suffix in (".key", ".pub"))
    private.parent.mkdir(parents=True, exist_ok=True)
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return private, public


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only, also over an older file (a resumed run's)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(data)


@functools.cache
def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A certificate-verifying TLS context that trusts ``ca_file``, else the public CAs (certifi); one per file.

    httpx builds a fresh context per client by default, loading the CA bundle (about 40 ms), even for plain
    http; a node opens a client per fetch, so a federation of one-user devices spent a third of its time there.
    """
    if not ca_file:
        return httpx.create_ssl_context()
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise LSC4RecError(
            f"the CA file {ca_file} cannot be read as a PEM certificate ({exc}). Give the CA that signed the "
            f"server's certificate (a device reads its path from ${SERVICE_CA_ENV}, best absolute; a loopback run "
            "writes it as tls/ca.crt in its run folder)."
        ) from None
