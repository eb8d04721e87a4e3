"""What every command shares: the one sync→async bridge, signal handling, error rendering.

Errors are printed as one line (``tcia-fetch: error: <what> (<where>)``) plus a hint where
one helps, never as a traceback, and the process exits with the error's documented code.
SIGINT and SIGTERM cancel the running command; the engine's cleanup runs (shielded) and the
command exits with EXIT_INTERRUPTED.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio
import click

from tcia_fetch.cli._show import shown
from tcia_fetch.errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    DestinationBusyError,
    DiskFullError,
    NameResolutionError,
    TciaFetchError,
    TLSError,
    UnauthorizedError,
)

__all__ = ["CommandInterruptedError", "die", "exit_interrupted", "run_command"]

_T = TypeVar("_T")

_HINTS: dict[type[TciaFetchError], str] = {
    DiskFullError: "free space (or raise the quota) and run the same command again: done series are kept",
    DestinationBusyError: "wait for the other run to finish, or use another --out",
    NameResolutionError: "check --base-url and your DNS (an HPC login node may need HTTPS_PROXY)",
    TLSError: "the server's certificate could not be verified; set SSL_CERT_FILE to your site's CA bundle",
    UnauthorizedError: "check TCIA_FETCH_USERNAME/TCIA_FETCH_PASSWORD; v4 needs no credentials at all",
}


class CommandInterruptedError(Exception):
    """Raised by :func:`run_command` when SIGINT/SIGTERM stopped the command."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def die(exc: TciaFetchError) -> NoReturn:
    """Print ``exc`` as one clear line (plus a hint) on stderr and exit with its code."""
    click.echo(f"tcia-fetch: error: {shown(exc, keep_newlines=True)}", err=True)  # may quote the server
    for kind, hint in _HINTS.items():
        if isinstance(exc, kind):
            click.echo(f"tcia-fetch: hint: {hint}", err=True)
            break
    sys.exit(exc.exit_code)


def run_command(main: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``main`` on asyncio; turn SIGINT/SIGTERM into cancellation and errors into exits.

    Raises :class:`CommandInterruptedError` after a signal so the caller can print what it has before
    exiting with EXIT_INTERRUPTED.
    """
    received: list[int] = []
    result: list[_T] = []

    async def guarded() -> None:
        async with anyio.create_task_group() as group:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        received.append(signum)
                        group.cancel_scope.cancel()
                        return

            group.start_soon(watch_signals)
            result.append(await main())
            group.cancel_scope.cancel()

    try:
        anyio.run(guarded, backend="asyncio")
    except TciaFetchError as exc:
        die(exc)
    except BaseExceptionGroup as group:
        inner = _first_error(group)
        if inner is None:
            raise
        die(inner)
    except OSError as exc:  # a local failure no layer could name more precisely
        click.echo(f"tcia-fetch: error: {shown(exc, keep_newlines=True)}", err=True)
        sys.exit(EXIT_FATAL)
    if received:
        raise CommandInterruptedError(received[0])
    if not result:  # cancelled without a signal: treat as interrupted
        raise CommandInterruptedError(signal.SIGINT)
    return result[0]


def _first_error(group: BaseExceptionGroup[BaseException]) -> TciaFetchError | None:
    for exc in group.exceptions:
        if isinstance(exc, TciaFetchError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_error(exc)
            if found is not None:
                return found
    return None


def exit_interrupted(signum: int) -> NoReturn:
    """Exit after an interruption with the documented code."""
    click.echo(
        f"tcia-fetch: interrupted by {signal.Signals(signum).name}; state saved, rerun to resume", err=True
    )
    sys.exit(EXIT_INTERRUPTED)
