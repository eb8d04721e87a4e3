"""The fake NBIA server as a separate process, one fresh instance per measured contender run.

A fresh server per run keeps the counters (429s sent, downloads started) attributable to exactly one
contender and gives every contender the same cold start (empty pixel cache). The server's own CPU is
read from ``/proc`` before and after the contender runs, so it is reported apart from the contender's.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.measure import cpu_seconds_of
from tcia_fetch.testing import self_signed_certificate

__all__ = ["FakeServer", "ServerOptions", "project_env"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def compile_project() -> None:
    """Write tcia-fetch's bytecode once, before any measured run, as ``pip install`` does.

    Project subprocesses run with ``PYTHONDONTWRITEBYTECODE`` (below), and this machine sets it
    globally too: without cached bytecode every measured run of tcia-fetch (and of the fake
    server) compiled all its modules from source, about 0.3 s of CPU a run that no installed
    copy pays, while the peers, installed by pip into ``benchmarks/.env``, ran from bytecode.
    ``compileall`` writes the caches regardless of that setting, and reading them is unaffected.
    """
    compileall.compile_dir(REPO_ROOT / "tcia_fetch", quiet=1, workers=0)


def project_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for project subprocesses: the repository importable, loopback never proxied."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        paths.append(str(REPO_ROOT))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class ServerOptions:
    """Catalog sizing and load model, as ``python -m tcia_fetch.testing serve`` takes them."""

    seed: int = 0
    collections: int = 2
    patients_per_collection: int = 2
    studies_per_patient: int = 1
    series_per_study: int = 2
    instances_per_series: tuple[int, int] = (2, 6)
    instance_bytes: tuple[int, int] = (2_000, 20_000)
    manifest: Path | None = None
    rate_bytes_per_s: float | None = None
    first_byte_delay_s: float = 0.0
    max_concurrent_downloads: int | None = None
    retry_after_s: float = 1.0
    query_delay_s: float = 0.0
    total_rate_bytes_per_s: float | None = None
    pixel_cache_bytes: int = 256 * 1024 * 1024
    #: Serve HTTPS (a self-signed certificate the contenders trust through SSL_CERT_FILE), as the
    #: real archive does.
    tls: bool = False

    def catalog_kwargs(self) -> dict[str, object]:
        """The catalog sizing, as ``Catalog.generate`` names it (for the results document)."""
        return {
            "seed": self.seed,
            "collections": self.collections,
            "patients_per_collection": self.patients_per_collection,
            "studies_per_patient": self.studies_per_patient,
            "series_per_study": self.series_per_study,
            "instances_per_series": self.instances_per_series,
            "instance_bytes": self.instance_bytes,
        }

    def argv(self) -> list[str]:
        """Command-line options for ``serve`` (port and files excluded)."""
        args = [
            f"--seed={self.seed}",
            f"--collections={self.collections}",
            f"--patients-per-collection={self.patients_per_collection}",
            f"--studies-per-patient={self.studies_per_patient}",
            f"--series-per-study={self.series_per_study}",
            f"--instances-per-series={self.instances_per_series[0]},{self.instances_per_series[1]}",
            f"--instance-bytes={self.instance_bytes[0]},{self.instance_bytes[1]}",
            f"--pixel-cache-bytes={self.pixel_cache_bytes}",
            f"--first-byte-delay-s={self.first_byte_delay_s}",
            f"--retry-after-s={self.retry_after_s}",
            f"--query-delay-s={self.query_delay_s}",
            "--log-level=WARNING",
        ]
        if self.manifest is not None:
            args.append(f"--manifest={self.manifest}")
        if self.rate_bytes_per_s is not None:
            args.append(f"--rate-bytes-per-s={self.rate_bytes_per_s}")
        if self.max_concurrent_downloads is not None:
            args.append(f"--max-concurrent-downloads={self.max_concurrent_downloads}")
        if self.total_rate_bytes_per_s is not None:
            args.append(f"--total-rate-bytes-per-s={self.total_rate_bytes_per_s}")
        return args

    def as_dict(self) -> dict[str, object]:
        """JSON-able description for the results document."""
        return {
            **self.catalog_kwargs(),
            "manifest": None if self.manifest is None else self.manifest.name,
            "rate_bytes_per_s": self.rate_bytes_per_s,
            "first_byte_delay_s": self.first_byte_delay_s,
            "max_concurrent_downloads": self.max_concurrent_downloads,
            "retry_after_s": self.retry_after_s,
            "query_delay_s": self.query_delay_s,
            "total_rate_bytes_per_s": self.total_rate_bytes_per_s,
            "tls": self.tls,
        }


class FakeServer:
    """A running ``python -m tcia_fetch.testing serve`` process. Use :meth:`start`."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, stats_file: Path, ca_file: Path | None = None
    ) -> None:
        self.process = process
        self.port = port
        self.stats_file = stats_file
        #: The certificate a client must trust (TLS scenarios), else None.
        self.ca_file = ca_file
        self.stats: dict[str, object] = {}
        self.cpu_s_total = 0.0

    @property
    def base_url(self) -> str:
        """The v4 API root, with its trailing slash."""
        scheme = "http" if self.ca_file is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}/nbia-api/services/v4/"

    def client_env(self) -> dict[str, str]:
        """Environment a contender needs to reach this server (its CA, for a TLS scenario)."""
        return {} if self.ca_file is None else {"SSL_CERT_FILE": str(self.ca_file)}

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far."""
        return cpu_seconds_of(self.process.pid)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        options: ServerOptions,
        workdir: Path,
        *,
        startup_timeout_s: float = 120.0,
        python: str = sys.executable,
        extra_argv: Sequence[str] = (),
    ) -> Iterator[FakeServer]:
        """Start the server, wait for its port file, yield it; on exit stop it and load its stats."""
        workdir.mkdir(parents=True, exist_ok=True)
        port_file = workdir / "server.port"
        stats_file = workdir / "server-stats.json"
        log_file = workdir / "server.log"
        for stale in (port_file, stats_file):
            stale.unlink(missing_ok=True)
        argv = [
            python,
            "-m",
            "tcia_fetch.testing",
            "serve",
            "--port=0",
            f"--port-file={port_file}",
            f"--stats-file={stats_file}",
            # The real server reads MD5s from its database; hash before listening so that asking
            # for md5hashes.csv costs the shared CPU nothing during the measured run.
            "--precompute-md5",
            *options.argv(),
            *extra_argv,
        ]
        ca_file = None
        if options.tls:
            ca_file, key = self_signed_certificate(workdir / "tls")
            argv += [f"--tls-cert={ca_file}", f"--tls-key={key}"]
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                argv, env=project_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir
            )
        server: FakeServer | None = None
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not port_file.exists():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"fake server exited with {process.returncode}: {log_file.read_text()[-2000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fake server did not start within {startup_timeout_s} s")
                time.sleep(0.02)
            server = cls(process, int(port_file.read_text().strip()), stats_file, ca_file)
            yield server
        finally:
            if server is not None:
                server.cpu_s_total = server.cpu_s()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if server is not None and stats_file.exists():
                server.stats = json.loads(stats_file.read_text())
