"""``tcia-fetch sbatch``: a valid array script whose every task runs its own shard of the job."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tcia_fetch.cluster.sbatch import ArrayScript, render_sbatch
from tcia_fetch.errors import InputError


def _sbatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcia_fetch", "sbatch", *args], capture_output=True, text=True, timeout=60
    )


def test_each_array_task_runs_its_own_shard_with_the_job_budget(tmp_path: Path) -> None:
    job = tmp_path / "my job.toml"
    job.write_text("[[query]]\ncollection = 'X'\n")
    done = _sbatch(
        str(job),
        "--out",
        str(tmp_path / "dest"),
        "--shards",
        "16",
        "--concurrency",
        "32",
        "--partition",
        "long",
        "--max-parallel",
        "8",
    )
    assert done.returncode == 0, done.stderr
    script = tmp_path / "array.sh"
    script.write_text(done.stdout)
    assert "#SBATCH --array=0-15%8" in done.stdout
    assert "#SBATCH --partition=long" in done.stdout
    assert "NOTE" not in done.stdout
    # Run the script as Slurm would for task 3, with a stand-in tcia-fetch that prints its argv.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "tcia-fetch"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "3"}
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert ran.returncode == 0, ran.stderr
    argv = ran.stdout.splitlines()
    assert argv[:2] == ["run", str(job.resolve())]
    assert argv[argv.index("--out") + 1] == str((tmp_path / "dest").resolve())
    assert argv[argv.index("--shard") + 1] == "3/16"
    assert argv[argv.index("--concurrency") + 1] == "32"


def test_fewer_slots_than_shards_is_pointed_out() -> None:
    text = render_sbatch(
        ArrayScript(Path("j.toml"), Path("d"), shards=16, run_options=["--concurrency", "4"])
    )
    assert "NOTE: 16 shards but --concurrency 4" in text


@pytest.mark.parametrize(
    ("changes", "option"),
    [({"shards": 0}, "--shards"), ({"time": "tomorrow"}, "--time"), ({"mem": "4G; rm -rf /"}, "--mem")],
)
def test_values_slurm_would_misread_are_refused(changes: dict[str, object], option: str) -> None:
    fields: dict[str, object] = {"job": Path("j.toml"), "out": Path("d"), "shards": 4, **changes}
    with pytest.raises(InputError, match=option):
        render_sbatch(ArrayScript(**fields))  # type: ignore[arg-type]


def test_a_bad_value_exits_2(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text("")
    done = _sbatch(str(job), "--out", str(tmp_path), "--shards", "0")
    assert done.returncode == 2
    assert "--shards" in done.stderr


def test_a_bucket_destination_reaches_every_task_as_the_url(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text("[[query]]\ncollection = 'X'\n")
    done = _sbatch(str(job), "--out", "s3://lake/tcia", "--shards", "4")
    assert done.returncode == 0, done.stderr
    run_line = next(line for line in done.stdout.splitlines() if line.startswith("tcia-fetch run"))
    assert " --out s3://lake/tcia " in run_line
    assert "s3:/lake" not in done.stdout.replace("s3://lake", "")


@pytest.mark.parametrize("out", ["gs://lake/tcia", "s3:/lake/tcia", "s3://Bad_Bucket/x"])
def test_a_destination_url_the_run_would_refuse_exits_2(tmp_path: Path, out: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text("")
    done = _sbatch(str(job), "--out", out, "--shards", "4")
    assert done.returncode == 2, done.stdout
    assert "--out" in done.stderr
    assert "#SBATCH" not in done.stdout
