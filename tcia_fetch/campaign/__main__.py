"""``python -m tcia_fetch.campaign [--full] [--kills N] [--hostile N] [--fuzz-examples N] [--json FILE]``.

Runs the reliability and security campaign and prints its figures; exits 0 only when every
data-lost figure is 0 and every part held its promises (1 otherwise, 2 for a usage error).
Progress goes to stderr, the summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tcia_fetch.campaign.runner import PARTS, CampaignSizes, run_campaign


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcia_fetch.campaign", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="release sizes: 3 matrix seeds, 200 kills, 1000 hostile archives, 100000 fuzz inputs",
    )
    parser.add_argument("--kills", type=int, help="SIGKILLs in the crash campaign")
    parser.add_argument("--hostile", type=int, help="hostile archives to try")
    parser.add_argument("--fuzz-examples", type=int, help="parser inputs to fuzz")
    parser.add_argument("--json", type=Path, help="write every figure as JSON here")
    parser.add_argument(
        "--workdir", type=Path, help="keep the campaign's files here (default: a temporary dir)"
    )
    parser.add_argument("--skip", action="append", default=[], choices=PARTS, help="skip a part (repeatable)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    for name in ("kills", "hostile", "fuzz_examples"):
        value = getattr(args, name)
        if value is not None and value < 0:
            sys.stderr.write(f"--{name.replace('_', '-')} must be >= 0\n")
            return 2
    sizes = (CampaignSizes.full() if args.full else CampaignSizes()).with_overrides(
        kills=args.kills, hostile=args.hostile, fuzz_examples=args.fuzz_examples
    )

    def progress(message: str) -> None:
        if not args.quiet:
            sys.stderr.write(message.rstrip() + "\n")
            sys.stderr.flush()

    figures = run_campaign(
        sizes,
        mode="full" if args.full else "reduced",
        workdir=args.workdir,
        skip=frozenset(args.skip),
        seed=args.seed,
        progress=progress,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures.as_dict(), indent=2) + "\n", encoding="utf-8")
    sys.stdout.write("\n".join(figures.summary_lines()) + "\n")
    return 0 if figures.passed else 1


if __name__ == "__main__":
    sys.exit(main())
