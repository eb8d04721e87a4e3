"""A second loopback listener that records every request it receives (issue 14).

A hostile server redirects a client to "another origin": this is that origin. It answers every
request 200 with a small JSON body that looks like a token grant (so a client that did follow
would carry on) and keeps the method, path, headers and body of each request, so a test can
prove that no credential ever reached it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

__all__ = ["RecordedRequest", "RecordingListener"]

_MAX_BODY = 64 * 1024
_ANSWER = b'{"access_token":"from-the-other-origin","expires_in":7200,"token_type":"bearer"}'


@dataclass(frozen=True)
class RecordedRequest:
    """What reached the listener."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def contains(self, secret: str) -> bool:
        """Whether ``secret`` appears anywhere in the request (path, headers or body)."""
        text = " ".join([self.path, *self.headers.values()]).encode() + b" " + self.body
        return secret.encode() in text


class RecordingListener:
    """``with RecordingListener() as other: other.url ... other.requests``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, _MAX_BODY)) if length else b""
                with listener._lock:
                    listener.requests.append(
                        RecordedRequest(self.command, self.path, dict(self.headers.items()), body)
                    )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(_ANSWER)))
                self.end_headers()
                self.wfile.write(_ANSWER)

            do_GET = do_POST = do_PUT = _record  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: object) -> None:
                del format, args  # quiet: the test reads .requests

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="recording-listener", daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
