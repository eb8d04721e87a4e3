"""pandas is optional: ``import tcia_fetch`` and the CLI never load it, and its absence is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEAD = "http://127.0.0.1:9/nbia-api/services/v4/"  # nothing listens: any request would fail differently
HEAVY = ("pandas", "pyarrow", "IPython", "numpy")

BLOCKER = """
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pandas", "pyarrow"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def python(code: str, tmp_path: Path, *, block_pandas: bool = False) -> subprocess.CompletedProcess[str]:
    paths = [str(ROOT)]
    if block_pandas:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCKER)
        paths.insert(0, str(site))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env.pop("TCIA_FETCH_BASE_URL", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def test_import_and_cli_help_do_not_load_pandas(tmp_path: Path) -> None:
    code = f"""
        import runpy, sys
        import tcia_fetch
        assert hasattr(tcia_fetch, "series")
        sys.argv = ["tcia-fetch", "query", "--help"]
        try:
            runpy.run_module("tcia_fetch", run_name="__main__")
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        print(sorted(name for name in {HEAVY!r} if name in sys.modules))
    """
    result = python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_without_pandas_the_functions_name_the_extra_before_any_request(tmp_path: Path) -> None:
    code = f"""
        import tcia_fetch as tf
        tf.configure(base_url={DEAD!r})
        try:
            tf.series(collection="HNSCC")
        except ImportError as exc:
            assert isinstance(exc, tf.MissingDependencyError)
            print(exc)
    """
    result = python(code, tmp_path, block_pandas=True)
    assert result.returncode == 0, result.stderr
    assert "pip install 'tcia-fetch[pandas]'" in result.stdout


def test_without_pandas_query_parquet_exits_2_naming_the_extra(tmp_path: Path) -> None:
    target = str(tmp_path / "c.parquet")
    code = f"""
        import sys
        from tcia_fetch.cli.main import main
        sys.argv = ["tcia-fetch", "query", "collections", "--format", "parquet", "-o", {target!r},
                    "--base-url", {DEAD!r}]
        main()
    """
    result = python(code, tmp_path, block_pandas=True)
    assert result.returncode == 2, result.stderr
    assert "pip install 'tcia-fetch[pandas]'" in result.stderr
    assert not (tmp_path / "c.parquet").exists()
