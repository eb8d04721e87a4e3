"""``python -m benchmarks setup``: the contenders' own environment, kept apart from the project.

The peers are not project dependencies, so they live in ``benchmarks/.env/`` (gitignored): a venv with
``tcia-utils`` (the contender), ``matplotlib`` (the plot) and ``py-spy`` (profiling), all from PyPI.
``aria2c`` comes from the system package manager when missing (the harness runs as root on the
benchmark machines); ``curl`` and ``unzip`` are expected to be there already.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

__all__ = ["BENCH_ENV_DIR", "BENCH_PACKAGES", "bench_python", "setup_environment"]

BENCH_ENV_DIR = Path(__file__).resolve().parent / ".env"
BENCH_PACKAGES = ("tcia-utils==3.3.5", "matplotlib", "py-spy")


def bench_python(env_dir: Path = BENCH_ENV_DIR) -> Path:
    """The benchmark venv's interpreter (it may not exist yet: see :func:`setup_environment`)."""
    return env_dir / "bin" / "python"


def _run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def setup_environment(env_dir: Path = BENCH_ENV_DIR, *, install_system_tools: bool = True) -> None:
    """Create or update the venv and install aria2 if missing. Idempotent; raises on failure."""
    python = bench_python(env_dir)
    if not python.exists():
        print(f"creating {env_dir}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(env_dir)
    _run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run([str(python), "-m", "pip", "install", "--quiet", *BENCH_PACKAGES])
    if install_system_tools and shutil.which("aria2c") is None:
        apt = shutil.which("apt-get")
        if apt is None:
            print("aria2c is missing and apt-get is not available: the aria2 contender will be skipped")
        else:
            _run([apt, "update", "-qq"])
            _run([apt, "install", "-y", "-qq", "aria2"])
    for tool in ("curl", "unzip", "aria2c", "xargs"):
        print(f"{tool}: {shutil.which(tool) or 'MISSING'}")
    print(f"benchmark python: {python} ({sys.version.split()[0]} host)")
