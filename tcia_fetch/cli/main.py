"""The ``tcia-fetch`` command: one click group; each subcommand lives in its own module."""

from __future__ import annotations

import importlib
import signal
import sys

import click

from tcia_fetch import __version__
from tcia_fetch._memory import frozen_imports, limit_malloc_arenas
from tcia_fetch.cli._owner import claim_interpreter, owns_interpreter
from tcia_fetch.errors import EXIT_INTERRUPTED

# Each command's module is imported only when that command runs (or ``--help`` lists them):
# ``status`` and ``catalog`` need neither aiohttp nor the engine, and a
# process that imports them all starts with ~30 MB more resident memory.
_COMMANDS: dict[str, tuple[str, str]] = {
    "catalog": ("tcia_fetch.cli.catalogcmd", "catalog"),
    "demo": ("tcia_fetch.cli.demo", "demo"),
    "plan": ("tcia_fetch.cli.runcmd", "plan_command"),
    "query": ("tcia_fetch.cli.query", "query"),
    "run": ("tcia_fetch.cli.runcmd", "run_command_cli"),
    "sbatch": ("tcia_fetch.cli.sbatch", "sbatch_command"),
    "status": ("tcia_fetch.cli.inspect", "status"),
    "verify": ("tcia_fetch.cli.inspect", "verify"),
}


class _LazyGroup(click.Group):
    """A group whose subcommands are looked up in ``_COMMANDS`` when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        home = _COMMANDS.get(cmd_name)
        if home is None:
            return None
        with frozen_imports(enabled=owns_interpreter()):
            command = getattr(importlib.import_module(home[0]), home[1])
        assert isinstance(command, click.Command) and command.name == cmd_name, home
        return command


@click.group(
    cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="tcia-fetch")
def cli() -> None:
    """Verified, resumable bulk downloads from The Cancer Imaging Archive (NBIA REST API).

    \b
    Exit codes: 0 every planned series verified on disk; 1 some series failed (see the report);
    2 bad input (job file, manifest, option); 3 fatal (credentials, disk full, destination
    unusable or busy); 130 interrupted (SIGINT/SIGTERM; rerun the same command to resume).
    """


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point.

    A signal that arrives before a command's event loop has taken over signal handling (for
    example during start-up on a loaded login node) still ends in the documented way: nothing
    has been written yet, and the exit code is EXIT_INTERRUPTED. SIGTERM is handled like SIGINT.
    """
    claim_interpreter()  # a tcia-fetch process: its commands may tune it for themselves
    limit_malloc_arenas()  # before any thread starts; a smaller heap (tcia_fetch/_memory.py)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("tcia-fetch: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
