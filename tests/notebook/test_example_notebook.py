"""The example notebook runs top to bottom in a real Jupyter kernel (nbclient + the venv's ipykernel).

It starts its own fake server, so this checks the whole classic workflow as a user runs it: the
notebook functions inside Jupyter's running event loop, the warning for a typo, the progress
display updated in place, the download and its report, and the files on disk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "classic-tcia-workflow.ipynb"
KERNEL = "tcia-fetch-test"


def _text(output: dict[str, object]) -> str:
    if output.get("output_type") == "stream":
        return str(output.get("text", ""))
    data = output.get("data", {})
    assert isinstance(data, dict)
    return str(data.get("text/plain", "")) + str(data.get("text/html", ""))


@pytest.mark.timeout(600)
def test_example_notebook_runs_the_classic_workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A kernelspec pinned to this interpreter, so no other Python's kernel can be picked up.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "tcia-fetch test",
                "language": "python",
                "env": {"PYTHONPATH": str(ROOT)},
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TCIA_FETCH_BASE_URL", raising=False)
    work = tmp_path / "work"
    work.mkdir()

    notebook = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]  # nbformat is untyped
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "strip outputs"
    )
    client = NotebookClient(
        notebook, timeout=180, kernel_name=KERNEL, resources={"metadata": {"path": str(work)}}
    )
    client.execute()

    outputs = {
        index: "".join(_text(output) for output in cell.get("outputs", []))
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    }
    everything = "\n".join(outputs.values())
    assert "Traceback" not in everything and "Error" not in everything, everything
    assert "did you mean 'RIDER-Synthetic-Breast'?" in everything  # the typo cell's warning

    download_cell = next(i for i, cell in enumerate(notebook.cells) if "tf.download(" in cell.source)
    displays = [o for o in notebook.cells[download_cell].outputs if o.output_type == "display_data"]
    assert len(displays) == 1, "the progress display is one output, updated in place"
    assert "finished" in _text(displays[0]) and "series 2/2 done" in _text(displays[0])
    assert "DownloadReport(planned=2, done=2, skipped=0, failed=0, exit_code=0" in outputs[download_cell]

    out = work / "tcia-example-data"
    report = json.loads((out / ".tcia-fetch" / "last-report.json").read_text())
    assert report["done"] == 2 and report["failed"] == 0
    rows = (out / "metadata.csv").read_text().splitlines()
    assert len(rows) == 3  # header + the two chosen series
    assert len(list(out.rglob("*.dcm"))) >= 6  # two series of at least three images each
