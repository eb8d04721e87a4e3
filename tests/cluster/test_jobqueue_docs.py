"""The README's dask-jobqueue example builds valid Slurm and PBS worker jobs (no batch system needed)."""

from __future__ import annotations

from dask_jobqueue.pbs import PBSCluster
from dask_jobqueue.slurm import SLURMCluster


def test_the_readme_slurm_cluster_arguments_make_a_worker_job_script() -> None:
    cluster = SLURMCluster(
        cores=2,
        processes=1,
        memory="4GB",
        walltime="24:00:00",
        queue="long",
        account="mylab",
        local_directory="$TMPDIR",
        scheduler_options={"dashboard_address": ":0"},
    )
    try:
        script: str = cluster.job_script()  # type: ignore[no-untyped-call]  # dask_jobqueue is untyped
    finally:
        cluster.close()
    assert "#SBATCH -p long" in script
    assert "#SBATCH -A mylab" in script
    assert "#SBATCH -t 24:00:00" in script
    assert "distributed.cli.dask_worker" in script or "dask-worker" in script or "dask worker" in script


def test_the_readme_pbs_cluster_arguments_make_a_worker_job_script() -> None:
    cluster = PBSCluster(
        cores=2,
        processes=1,
        memory="4GB",
        walltime="24:00:00",
        queue="workq",
        resource_spec="select=1:ncpus=2:mem=4GB",
        local_directory="$TMPDIR",
        scheduler_options={"dashboard_address": ":0"},
    )
    try:
        script: str = cluster.job_script()  # type: ignore[no-untyped-call]  # dask_jobqueue is untyped
    finally:
        cluster.close()
    assert "#PBS -q workq" in script
    assert "#PBS -l select=1:ncpus=2:mem=4GB" in script
    assert "#PBS -l walltime=24:00:00" in script
