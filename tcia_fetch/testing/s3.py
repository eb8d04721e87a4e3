"""An S3 API on loopback for tests, the campaign and benchmarks: moto, and a fault-injecting proxy.

Needs moto's server (``pip install 'tcia-fetch[test]'``); imported only by those who use it.

``MotoS3`` starts moto's threaded server on 127.0.0.1 (an ephemeral port) and lowers its minimum
multipart part size so small test archives still exercise multipart uploads. ``FaultProxy``
forwards every request to moto unless a :class:`Fault` rule matches it first: a 503 SlowDown, a
500, a connection reset in the middle of a request body, a failing CompleteMultipartUpload, or a
stall (the request is held, then cut without reaching moto: the campaign kills the CLI meanwhile,
so that a multipart upload is certainly open at the kill).
``s3_env`` is the AWS environment a run needs (canary credentials, endpoint, region, and no
profile files of the developer's).
"""

from __future__ import annotations

import http.client
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = [
    "CANARY_KEY_ID",
    "CANARY_SECRET",
    "CANARY_TOKEN",
    "Fault",
    "FaultProxy",
    "MotoS3",
    "MotoS3Process",
    "list_keys",
    "open_uploads",
    "s3_env",
]

CANARY_KEY_ID = "AKIACANARYKEYID12345"
CANARY_SECRET = "canary-secret-DO-NOT-LEAK-9f8e7d6c5b4a"
CANARY_TOKEN = "canary-session-token-DO-NOT-LEAK-1a2b3c"
#: Parts of this size in tests (moto's minimum is lowered below it).
TEST_PART_BYTES = 8 * 1024
_CODES = {"503": (503, "SlowDown"), "500": (500, "InternalError"), "403": (403, "AccessDenied")}
_HOP_HEADERS = ("content-length", "transfer-encoding", "connection", "date", "server")


class MotoS3:
    def __init__(self) -> None:
        import moto.s3.models
        from moto.server import ThreadedMotoServer

        moto.s3.models.S3_UPLOAD_PART_MIN_SIZE = 1024  # type: ignore[attr-defined]
        # One log line per request on stderr would bury the campaign's progress lines.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> Any:
        return _client(self.endpoint)


class MotoS3Process:
    """moto's server as its own process (``python -m moto.server``), for the benchmarks.

    In-process moto shares the interpreter lock with whatever else the caller runs (the fake NBIA
    server, samplers), which slows both; a separate process measures tcia-fetch, not that contention.
    Its minimum part size stays moto's default (5 MiB), so use real-sized parts with it.
    """

    def __init__(self, start_timeout_s: float = 60.0) -> None:
        import subprocess
        import sys

        with socket.socket() as probe:  # a free loopback port for the server to take
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except Exception:
            self._proc.kill()
            self._proc.wait()

    def client(self) -> Any:
        return _client(self.endpoint)


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CANARY_KEY_ID,
        aws_secret_access_key=CANARY_SECRET,
    )


def s3_env(endpoint: str, work_dir: Path, home: Path) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": CANARY_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": CANARY_SECRET,
        "AWS_SESSION_TOKEN": CANARY_TOKEN,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "TCIA_FETCH_WORK_DIR": str(work_dir),
        "TCIA_FETCH_S3_PART_BYTES": str(TEST_PART_BYTES),
    }


def list_keys(client: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    keys: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            keys[item["Key"]] = item["Size"]
    return keys


def open_uploads(client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())]


@dataclass
class Fault:
    """Inject ``kind`` into requests with ``method`` whose path+query contains ``match``, ``times`` times.

    kinds: "503" (SlowDown), "500" (InternalError), "reset" (read half the body, then RST),
    "403" (AccessDenied), "stall" (read the body, hold the request ``delay_s``, then RST without
    forwarding it: the client's retry goes through, unless the client is gone by then).
    """

    kind: str
    method: str
    match: str
    times: int = 1
    hits: int = 0
    delay_s: float = 0.0


@dataclass
class FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self
        self._mutex = threading.Lock()
        host, _, port = self.upstream.removeprefix("http://").partition(":")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                proxy.requests.append(f"{self.command} {self.path}")
                fault = proxy._match(self.command, self.path)
                if fault is not None and fault.kind == "reset":
                    self.rfile.read(max(length // 2, 0))
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else b""
                if len(body) < length:
                    # The client died mid-body (a campaign SIGKILL): forwarding the part with the
                    # full Content-Length would leave moto waiting for the rest until a timeout.
                    self.close_connection = True
                    return
                if fault is not None and fault.kind == "stall":
                    time.sleep(fault.delay_s)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault is not None:
                    status, name = _CODES[fault.kind]
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{name}</Code>"
                        f"<Message>injected</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":  # a HEAD answer has no body (aiohttp is strict)
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                try:  # closed whatever happens: a socket left to the GC fails the test that owns it
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                finally:
                    connection.close()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # a client killed mid-request (the campaign's SIGKILLs) is expected, not news

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _match(self, method: str, path: str) -> Fault | None:
        with self._mutex:  # one handler thread per request: a rule's count must not race
            for fault in self.faults:
                if fault.method == method and fault.match in path and fault.hits < fault.times:
                    fault.hits += 1
                    return fault
        return None

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
