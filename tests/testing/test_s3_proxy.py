"""The S3 fault proxy of the tests and the campaign (tcia_fetch/testing/s3.py, ``FaultProxy``)."""

from __future__ import annotations

import socket

from tcia_fetch.testing.s3 import FaultProxy


def test_a_body_cut_by_a_dying_client_is_not_forwarded() -> None:
    # A client SIGKILLed mid-upload leaves the proxy a short body. Forwarded with its full
    # Content-Length, it kept moto (and the proxy's socket to it) waiting 30 s, and that socket,
    # left to the garbage collector, failed whichever test was running (a ResourceWarning).
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        upstream.settimeout(1.0)
        proxy = FaultProxy(f"http://127.0.0.1:{upstream.getsockname()[1]}")
        try:
            host, port = proxy.endpoint.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as client:
                head = b"PUT /lake/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                client.sendall(head + b"a" * 100)
                client.shutdown(socket.SHUT_WR)
                client.recv(1)  # the proxy closes without an answer
            try:
                connection, _ = upstream.accept()
            except TimeoutError:
                connection = None
            assert connection is None, "the proxy forwarded a cut body upstream"
            assert proxy.requests == ["PUT /lake/x"]
        finally:
            proxy.stop()
