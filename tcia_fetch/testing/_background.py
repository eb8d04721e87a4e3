"""Serve a fake NBIA from a background thread, for code that is not async (notebooks, scripts).

``FakeNBIA.serve()`` is an async context manager, which a notebook cell or a plain script cannot
hold open across calls. :func:`serve_in_background` runs it on a private event loop in a daemon
thread and returns once the server listens; ``stop()`` (or leaving the ``with`` block) shuts it
down and joins the thread. The server's loop is its own, so it keeps answering while the
caller's thread blocks in a synchronous download, and it never touches a loop the caller runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self

from tcia_fetch.testing._catalog import Catalog
from tcia_fetch.testing._server import FakeNBIA, RunningServer

__all__ = ["BackgroundServer", "serve_in_background"]


class BackgroundServer:
    """A fake NBIA serving from a daemon thread; see :func:`serve_in_background`.

    ``base_url`` is the v4 API root to give ``tf.configure(base_url=...)``, ``--base-url`` or
    ``TCIA_FETCH_BASE_URL``; ``server`` is the :class:`RunningServer` (request log, stats);
    ``fake`` the :class:`FakeNBIA` (its catalog is the ground truth).
    """

    def __init__(self, fake: FakeNBIA, *, host: str, port: int, start_timeout_s: float) -> None:
        self.fake = fake
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._server: RunningServer | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(host, port), name="fake-nbia", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout_s):
            self.stop()
            raise TimeoutError(f"the fake NBIA server did not start within {start_timeout_s:.0f} s")
        if self._error is not None:
            raise RuntimeError(f"the fake NBIA server failed to start: {self._error!r}") from self._error

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(host, port))
        finally:
            self._loop.close()

    async def _serve(self, host: str, port: int) -> None:
        self._stop = asyncio.Event()
        try:
            async with self.fake.serve(host=host, port=port) as server:
                self._server = server
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # handed to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    @property
    def server(self) -> RunningServer:
        """The running server (its request log and counters)."""
        if self._server is None:
            raise RuntimeError("the fake NBIA server is not running")
        return self._server

    @property
    def base_url(self) -> str:
        """The v4 API root, e.g. ``http://127.0.0.1:PORT/nbia-api/services/v4/``."""
        return self.server.base_url

    @property
    def running(self) -> bool:
        """True until :meth:`stop` has finished."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop serving and join the thread (idempotent)."""
        stop = self._stop
        if self._thread.is_alive() and stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between check and call
                self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"base_url={self._server.base_url!r}" if self._server is not None else "not running"
        return f"BackgroundServer({state})"


def serve_in_background(
    fake: FakeNBIA | None = None,
    *,
    catalog: Catalog | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    start_timeout_s: float = 60.0,
) -> BackgroundServer:
    """Start a fake NBIA in a background thread and return once it listens.

    Give a configured ``fake`` (faults, load model), or a ``catalog`` (default: the demo-sized
    ``Catalog.generate(seed=7, collections=3)``). Use it in a ``with`` block or call ``stop()``::

        server = serve_in_background()
        tf.configure(base_url=server.base_url)
        ...
        server.stop()
    """
    if fake is None:
        fake = FakeNBIA(catalog if catalog is not None else Catalog.generate(seed=7, collections=3))
    elif catalog is not None:
        raise ValueError("give either fake or catalog, not both")
    return BackgroundServer(fake, host=host, port=port, start_timeout_s=start_timeout_s)
