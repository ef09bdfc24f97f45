"""Serving an export folder to browsers and headsets: plain HTTP on localhost, or HTTPS with a self-signed
certificate for a headset on the LAN (WebXR needs a secure context: HTTPS, or http://localhost).

Standard library HTTP server, ``cryptography`` for the certificate (imported only for HTTPS). Must not import torch.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import logging
import os
import ssl
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

log = logging.getLogger(__name__)

MIME_TYPES = {
    ".ply": "application/octet-stream",
    ".splat": "application/octet-stream",
    ".spz": "application/octet-stream",
    ".sog": "application/octet-stream",
    ".glb": "model/gltf-binary",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
}


class ExportRequestHandler(SimpleHTTPRequestHandler):
    """Files of one folder, with the splat formats' MIME types, logged through ``logging``."""

    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")  # viewers on other origins may fetch the files
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)


def self_signed_certificate(out_dir: str | os.PathLike, host: str) -> tuple[Path, Path]:
    """A self-signed certificate and key for ``host`` (and localhost) in ``out_dir``; returns (cert, key) paths."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as e:
        raise ImportError(f"--https needs the cryptography package (pip install cryptography): {e}") from e
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cvd-scene view")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = out_dir / "cert.pem", out_dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_server(
    folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, cert_dir: str | os.PathLike | None = None
) -> ThreadingHTTPServer:
    """A server for the files of ``folder`` on ``host:port`` (port 0: any free one); HTTPS with a self-signed
    certificate written to ``cert_dir`` when it is given. Call ``serve_forever()`` on it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to serve: {folder} is not a folder (run `cvd-scene export` first)")
    handler = functools.partial(ExportRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer((host, port), handler)
    if cert_dir is not None:
        cert, key = self_signed_certificate(cert_dir, host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def server_url(server: ThreadingHTTPServer, https: bool, page: str = "viewer.html") -> str:
    host, port = server.server_address[:2]
    return f"{'https' if https else 'http'}://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/{page}"
