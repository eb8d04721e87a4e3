"""catalog.parquet / instances.parquet: derived from journal records, queried with DuckDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.store.catalog import CATALOG_NAME, INSTANCES_NAME, METADATA_COLUMNS, write_catalogs
from tcia_fetch.store.records import FileEntry, SeriesRecord
from tcia_fetch.testing import Catalog, FakeNBIA

#: The query the README shows.
README_QUERY = """
SELECT Collection, Modality,
       count(*)                        AS series,
       sum(tcia_instance_count)        AS images,
       sum(tcia_dicom_bytes)           AS dicom_bytes
FROM read_parquet('{catalog}')
GROUP BY ALL
ORDER BY Collection, Modality
"""


def record(index: int, status: str = "done") -> SeriesRecord:
    uid = f"1.2.3.{index}"
    return SeriesRecord(
        series_uid=uid,
        status=status,  # type: ignore[arg-type]
        at=1_700_000_000.0 + index,
        run_id="r",
        path=f"C{index % 2}/{uid}",
        files=(FileEntry("LICENSE", 10, "a" * 32), FileEntry("00000001.dcm", 1000 + index, "b" * 32)),
        instance_count=1,
        dicom_bytes=1000 + index,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        metadata={
            "SeriesInstanceUID": uid,
            "Collection": f"C{index % 2}",
            "Modality": "CT" if index % 3 else "MR",
            "ImageCount": 1,
            "NotAV4Column": "kept",
        },
    )


def generate(count: int) -> Iterator[SeriesRecord]:
    for index in range(count):
        yield record(index, "failed" if index % 10 == 9 else "done")


def test_one_row_per_done_series_with_every_metadata_column(tmp_path: Path) -> None:
    catalog_path, instances_path = write_catalogs(generate(10_000), tmp_path)
    assert (catalog_path.name, instances_path.name) == (CATALOG_NAME, INSTANCES_NAME)
    table = pq.read_table(catalog_path)
    assert table.num_rows == 9_000
    assert list(table.column_names[: len(METADATA_COLUMNS)]) == list(METADATA_COLUMNS)
    assert len(METADATA_COLUMNS) == 40 and "PixelSpacing(mm)-Row" in METADATA_COLUMNS
    first = table.slice(0, 1).to_pylist()[0]
    assert first["SeriesInstanceUID"] == "1.2.3.0" and first["ImageCount"] == "1"
    assert first["tcia_path"] == "C0/1.2.3.0" and first["tcia_files"] == ["LICENSE", "00000001.dcm"]
    assert first["tcia_stored_bytes"] == 1010 and first["tcia_dicom_bytes"] == 1000
    assert first["tcia_extra_metadata"] == '{"NotAV4Column": "kept"}'
    assert first["PatientID"] is None
    instances = pq.read_table(instances_path)
    assert instances.num_rows == 18_000
    assert instances.slice(1, 1).to_pylist()[0] == {
        "SeriesInstanceUID": "1.2.3.0",
        "file_name": "00000001.dcm",
        "path": "C0/1.2.3.0/00000001.dcm",
        "size": 1000,
        "md5": "b" * 32,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [CATALOG_NAME, INSTANCES_NAME]


def test_the_readme_duckdb_query_runs_over_the_catalog(tmp_path: Path) -> None:
    write_catalogs(generate(30), tmp_path)
    relation = duckdb.sql(README_QUERY.format(catalog=tmp_path / CATALOG_NAME))
    assert relation is not None  # a SELECT always has a result relation
    rows = relation.fetchall()
    expected: dict[tuple[str, str], list[int]] = {}
    for item in generate(30):
        if item.status == "done":
            meta = item.metadata or {}
            key = (str(meta["Collection"]), str(meta["Modality"]))
            totals = expected.setdefault(key, [0, 0, 0])
            totals[0] += 1
            totals[1] += item.instance_count or 0
            totals[2] += item.dicom_bytes or 0
    assert [(c, m, s, i, b) for c, m, s, i, b in rows] == [(*key, *expected[key]) for key in sorted(expected)]


@pytest.mark.anyio
async def test_a_run_writes_the_catalog_of_what_it_verified(tmp_path: Path) -> None:
    catalog = Catalog.generate(
        seed=5, collections=2, patients_per_collection=1, series_per_study=2, instances_per_series=(2, 4)
    )
    uids = [series.uid for series in catalog.series]
    job = tmp_path / "job.toml"
    job.write_text("[series]\nuids = [" + ", ".join(f'"{u}"' for u in uids) + "]\n")
    out = tmp_path / "out"
    async with FakeNBIA(catalog).serve() as server:
        report = await fetch(
            job,
            RunOptions(out=out, base_url=server.base_url, keep="tar.zst"),
            retry_policy=RetryPolicy(testing=True),
        )
    assert report.done == len(uids)
    table = pq.read_table(out / CATALOG_NAME).to_pylist()
    assert sorted(row["SeriesInstanceUID"] for row in table) == sorted(uids)
    for row in table:
        series = next(s for s in catalog.series if s.uid == row["SeriesInstanceUID"])
        assert row["Collection"] == series.collection
        assert row["tcia_instance_count"] == series.instance_count
        assert row["tcia_files"] == [f"{series.uid}.tar.zst"]
        assert (out / row["tcia_path"] / row["tcia_files"][0]).is_file()
    instances = pq.read_table(out / INSTANCES_NAME)
    assert instances.num_rows == len(uids)


def test_writing_the_catalog_imports_neither_pyarrow_nor_pandas(tmp_path: Path) -> None:
    """A run writes its catalog in its own process: pyarrow alone would add about 45 MB to it,
    pandas more. In a fresh interpreter, since this one has imported both already."""
    import subprocess
    import sys

    code = (
        "import sys, pathlib\n"
        "from tcia_fetch.store.catalog import write_catalogs\n"
        "from tcia_fetch.store.records import FileEntry, SeriesRecord\n"
        "records = [SeriesRecord(series_uid=f'1.2.{i}', status='done', at=1.0, run_id='r', path=f'C/{i}',\n"
        "           files=(FileEntry('1.dcm', 5, 'a' * 32),), metadata={'Modality': 'CT'})\n"
        "           for i in range(45)]\n"
        f"write_catalogs(records, pathlib.Path({str(tmp_path)!r}))\n"
        "loaded = sorted({'pyarrow', 'pandas', 'numpy'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    root = Path(__file__).parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert pq.read_table(tmp_path / CATALOG_NAME).num_rows == 45


def test_the_catalog_types_are_what_duckdb_users_query(tmp_path: Path) -> None:
    write_catalogs(generate(3), tmp_path)
    described = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{tmp_path / CATALOG_NAME}')").fetchall()
    types = {name: kind for name, kind, *_ in described}
    assert types["SeriesInstanceUID"] == "VARCHAR" and types["tcia_files"] == "VARCHAR[]"
    assert types["tcia_dicom_bytes"] == "BIGINT"
    assert types["tcia_downloaded_at"] == "TIMESTAMP WITH TIME ZONE"
    (first,) = duckdb.sql(
        f"SELECT epoch(tcia_downloaded_at) FROM read_parquet('{tmp_path / CATALOG_NAME}') "
        "WHERE SeriesInstanceUID = '1.2.3.1'"
    ).fetchall()
    assert first == (1_700_000_001,)


def test_a_catalog_that_cannot_be_written_says_where_and_leaves_nothing(tmp_path: Path) -> None:
    from tcia_fetch.errors import DestinationError

    with pytest.raises(DestinationError, match="cannot write the Parquet catalog in") as caught:
        write_catalogs(generate(3), tmp_path / "missing")
    assert str(tmp_path / "missing") in caught.value.message
    assert list(tmp_path.iterdir()) == []


def _journaled_destination(dest: Path, count: int) -> Path:
    """A destination whose journal holds ``generate(count)`` (no files: the catalog needs none)."""
    from tcia_fetch.store.journal import Journal

    with Journal.open(dest / ".tcia-fetch", run_id="t") as journal:
        for item in generate(count):
            journal.append(item)
    return dest


def test_the_catalog_command_loads_neither_numpy_pandas_nor_the_http_stack(tmp_path: Path) -> None:
    """``tcia-fetch catalog`` on a large destination (issue 13's 150 MB budget at 600,000
    series): the CLI loads only the command it runs, and the writer needs no pyarrow."""
    import subprocess
    import sys

    dest = _journaled_destination(tmp_path / "dest", 50)
    code = (
        "import sys\n"
        "from tcia_fetch.cli.main import main\n"
        f"sys.argv = ['tcia-fetch', 'catalog', {str(dest)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = {'numpy', 'pandas', 'pyarrow', 'aiohttp', 'tcia_fetch.engine.run', 'pydantic'}\n"
        "loaded = sorted(heavy & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert pq.read_table(dest / CATALOG_NAME).num_rows == 45
    assert pq.read_table(dest / INSTANCES_NAME).num_rows == 90


def test_the_catalog_columns_are_every_series_metadata_column_in_order() -> None:
    """The catalog's literal column list (kept so the writer never loads pydantic) is the model's."""
    from tcia_fetch.api.models import SeriesMetadataRow

    assert tuple(str(field.alias) for field in SeriesMetadataRow.model_fields.values()) == METADATA_COLUMNS
