"""A certificate authority made at test time, for the TLS tests (test_tls, test_secrets)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from engine.emulator.config import EmulatorConfig
from engine.emulator.server import EmulatorThread


@dataclass
class Authority:
    """A certificate authority made at test time, and the files a client or server needs."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_authority(folder: Path) -> Authority:
    """A fresh CA and a certificate for 127.0.0.1 and localhost signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = folder / "test-ca.pem"
    cert_file = folder / "emulator-cert.pem"
    key_file = folder / "emulator-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    return Authority(ca, ca_file, cert_file, key_file)


def https_emulator(config: EmulatorConfig, authority: Authority) -> EmulatorThread:
    """An emulator serving HTTPS with the test authority's certificate (not yet started)."""
    return EmulatorThread(config, ssl_context=authority.server_context())
