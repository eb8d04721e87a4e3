"""Draw ``latest.png``: verified throughput and peak memory per contender, one column per scenario.

Run with the benchmark venv's interpreter (matplotlib lives there, not in the project):
``benchmarks/.env/bin/python benchmarks/plot.py benchmarks/results``. Standalone on purpose: it reads
the ``*-latest.json`` documents and imports nothing from the project.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

_ORDER = ("loopback", "tcia-like", "huge", "tiny")


def main(argv: list[str]) -> int:
    # Imported by name: matplotlib exists only in the benchmark venv, never in the project's.
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    results = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results"
    documents = []
    for path in sorted(results.glob("*-latest.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        # smoke is a harness check, not a measurement worth a chart.
        if document.get("kind") == "download" and document.get("medians") and document["scenario"] != "smoke":
            documents.append(document)
    documents.sort(key=lambda d: _ORDER.index(d["scenario"]) if d["scenario"] in _ORDER else 99)
    if not documents:
        print("no download results to plot", file=sys.stderr)
        return 1
    figure, axes = plt.subplots(2, len(documents), figsize=(4.2 * len(documents), 7), squeeze=False)
    for column, document in enumerate(documents):
        names = list(document["medians"])
        colours = ["tab:green" if name.startswith("tcia-fetch") else "tab:gray" for name in names]
        throughput = [document["medians"][name].get("mb_per_s") or 0 for name in names]
        memory = [document["medians"][name].get("peak_rss_mb") or 0 for name in names]
        for row, (values, label) in enumerate(
            ((throughput, "verified MB/s (higher is better)"), (memory, "peak RSS MiB (lower is better)"))
        ):
            axis = axes[row][column]
            bars = axis.bar(range(len(names)), values, color=colours)
            axis.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
            axis.set_ylabel(label, fontsize=8)
            axis.bar_label(bars, fmt="%.4g", fontsize=7)
            if row == 0:
                axis.set_title(
                    f"{document['scenario']} ({document['series']} series, "
                    f"{document['dicom_mb'] / 1000:.2f} GB)",
                    fontsize=9,
                )
            if row == 1 and document["scenario"] in ("loopback", "huge"):
                axis.axhline(100, color="tab:red", linestyle="--", linewidth=0.8)
    figure.suptitle("tcia-fetch vs peers on the fake NBIA server (medians)", fontsize=11)
    figure.tight_layout()
    output = results / "latest.png"
    figure.savefig(output, dpi=80)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
