"""The loopback CA: absolute paths (Flower refuses relative ones), a private key only its owner reads."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from lsc4rec.credentials import make_loopback_tls, make_node_key


def test_loopback_tls_writes_absolute_paths_and_a_private_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tls = make_loopback_tls(Path("run") / "tls")  # a run folder under --out runs is relative
    for path in (tls.ca, tls.cert, tls.key):
        assert path.is_absolute() and path.is_file() and path.parent == tmp_path / "run" / "tls"
    assert tls.key.stat().st_mode & 0o077 == 0
    assert "PRIVATE KEY" not in tls.ca.read_text()  # the CA's key is never written
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.cert, tls.key)  # raises if the key is not the certificate's
    with pytest.raises(ssl.SSLError):
        server.load_cert_chain(tls.cert, make_loopback_tls(Path("other")).key)


def test_node_key_is_an_ec_pair_in_the_openssh_format_flower_reads(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    private, public = make_node_key(tmp_path / "tls" / "supernode-0")
    assert (private.name, public.name) == ("supernode-0.key", "supernode-0.pub")
    assert private.stat().st_mode & 0o077 == 0
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert load_ssh_public_key(public.read_bytes()) == key.public_key()
