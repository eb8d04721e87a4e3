"""The ``tcia-fetch`` command: one click group; each subcommand lives in its own module."""

from __future__ import annotations

import signal
import sys

import click

from tcia_fetch import __version__
from tcia_fetch.cli.demo import demo
from tcia_fetch.cli.inspect import catalog, status, verify
from tcia_fetch.cli.query import query
from tcia_fetch.cli.runcmd import plan_command, run_command_cli
from tcia_fetch.cli.sbatch import sbatch_command
from tcia_fetch.errors import EXIT_INTERRUPTED


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tcia-fetch")
def cli() -> None:
    """Verified, resumable bulk downloads from The Cancer Imaging Archive (NBIA REST API).

    \b
    Exit codes: 0 every planned series verified on disk; 1 some series failed (see the report);
    2 bad input (job file, manifest, option); 3 fatal (credentials, disk full, destination
    unusable or busy); 130 interrupted (SIGINT/SIGTERM; rerun the same command to resume).
    """


for command in (run_command_cli, plan_command, query, status, verify, catalog, demo, sbatch_command):
    cli.add_command(command)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point.

    A signal that arrives before a command's event loop has taken over signal handling (for
    example during start-up on a loaded login node) still ends in the documented way: nothing
    has been written yet, and the exit code is EXIT_INTERRUPTED. SIGTERM is handled like SIGINT.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("tcia-fetch: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
