"""``python -m benchmarks run SCENARIO... [--runs N] [--contenders a,b] [--out-dir DIR]`` and
``python -m benchmarks setup`` (see ``benchmarks/README.md``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.report import git_commit, machine_info, results_document, write_markdown
from benchmarks.runner import run_scenario
from benchmarks.scenarios import SCENARIOS
from benchmarks.server import compile_project
from benchmarks.setup_env import bench_python, setup_environment

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run scenarios and write results")
    run.add_argument("scenarios", nargs="+", metavar="SCENARIO", help=f"one of {sorted(SCENARIOS)} or 'all'")
    run.add_argument(
        "--runs", type=int, default=None, help="runs per contender (default: 3; smoke and huge 1)"
    )
    run.add_argument(
        "--contenders", default=None, help="comma-separated families or names, e.g. tcia-fetch,curl"
    )
    run.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    run.add_argument("--temp-dir", type=Path, default=None, help="where downloads go (default: system temp)")
    run.add_argument("--no-plot", action="store_true", help="skip latest.png")
    setup = commands.add_parser("setup", help="create benchmarks/.env and install aria2 if missing")
    setup.add_argument("--no-system-tools", action="store_true", help="do not apt-get install aria2")
    return parser


def _plot(out_dir: Path) -> None:
    python = bench_python()
    if not python.exists():
        print("latest.png skipped: no benchmark venv (python -m benchmarks setup)", file=sys.stderr)
        return
    plot = Path(__file__).resolve().parent / "plot.py"
    done = subprocess.run([str(python), str(plot), str(out_dir)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"latest.png not written: {done.stderr.strip()[-500:]}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "setup":
        setup_environment(install_system_tools=not args.no_system_tools)
        return 0
    # "all" = every measurement; smoke is the CI check of the harness, run it by name.
    names = [name for name in SCENARIOS if name != "smoke"] if "all" in args.scenarios else args.scenarios
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; known: {sorted(SCENARIOS)}", file=sys.stderr)
        return 2
    if args.runs is not None and args.runs < 1:
        print("--runs must be at least 1", file=sys.stderr)
        return 2
    wanted = (
        [item.strip() for item in args.contenders.split(",") if item.strip()] if args.contenders else None
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    compile_project()
    machine = machine_info()
    commit = git_commit()
    for name in names:
        scenario = SCENARIOS[name]
        result = run_scenario(
            scenario,
            runs=args.runs or scenario.default_runs,
            contender_filter=wanted,
            temp_parent=args.temp_dir,
        )
        document = results_document(result, machine, commit)
        path = args.out_dir / f"{name}-latest.json"
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
        markdown = write_markdown(args.out_dir)
        print(f"wrote {markdown}", file=sys.stderr)
    if not args.no_plot:
        _plot(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
