"""The loopback CA: absolute paths (Flower refuses relative ones), a private key only its owner reads."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from lsc4rec.tls import make_loopback_tls


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
