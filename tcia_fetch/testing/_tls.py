"""A throwaway certificate for serving the fake over TLS on loopback.

The real archive is HTTPS only, and a TLS connection costs a client memory and CPU that plain
HTTP does not (asyncio keeps a 256 KiB read buffer per TLS connection), so the benchmarks and
tests that measure those serve the fake over TLS too. The certificate is self-signed for
127.0.0.1 (as IP subject alternative name, which verification checks) and valid for a day; a
client trusts it through ``SSL_CERT_FILE``, exactly as a site CA bundle would be configured.

Made with the ``openssl`` command rather than a Python crypto package, which the package
itself does not otherwise need.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["self_signed_certificate"]


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for ``host`` (an IP address) into ``directory``.

    Raises RuntimeError when no ``openssl`` command is installed or it fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("serving the fake over TLS needs the openssl command to make a certificate")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    done = subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"openssl could not make a test certificate: {done.stderr.strip()[-400:]}")
    return cert, key
