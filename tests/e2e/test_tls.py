"""The real archive is HTTPS only: a run against the fake served over TLS verifies the server's
certificate, refuses one it was not told to trust, and completes once the certificate is trusted
the way a site CA bundle is (``SSL_CERT_FILE``). The mem64-tls benchmark relies on this."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tcia_fetch.errors import EXIT_FATAL, EXIT_OK
from tcia_fetch.testing import Catalog, self_signed_certificate

from .fixtures import cli, fake_server_process

pytestmark = pytest.mark.e2e

SIZING = {"seed": 8, "collections": 1, "patients_per_collection": 1, "series_per_study": 2}


def run(job: Path, out: Path, base_url: str, env: dict[str, str]) -> tuple[int, str]:
    proc = cli(
        "run", str(job), "--out", str(out), "--base-url", base_url, "--quiet",
        extra_env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def test_a_run_over_tls_trusts_only_the_certificate_it_is_told_to(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    catalog = Catalog.generate(**SIZING)  # type: ignore[arg-type]
    job = tmp_path / "job.tcia"
    job.write_text("ListOfSeriesToDownload=\n" + "\n".join(series.uid for series in catalog.series) + "\n")
    args = [f"--{name.replace('_', '-')}={value}" for name, value in SIZING.items()]
    with fake_server_process(tmp_path, [*args, f"--tls-cert={cert}", f"--tls-key={key}"]) as base_url:
        assert base_url.startswith("https://127.0.0.1:")
        system_bundle = {"SSL_CERT_FILE": os.environ.get("SSL_CERT_FILE", "/nonexistent/ca.pem")}
        code, stderr = run(job, tmp_path / "refused", base_url, system_bundle)
        assert code == EXIT_FATAL, stderr
        assert "certificate" in stderr.lower()
        assert not list((tmp_path / "refused").rglob("*.dcm"))

        code, stderr = run(job, tmp_path / "trusted", base_url, {"SSL_CERT_FILE": str(cert)})
    assert code == EXIT_OK, stderr
    files = sorted((tmp_path / "trusted").rglob("*.dcm"))
    assert len(files) == sum(series.instance_count for series in catalog.series)
