"""TCIA from a notebook: look-ups as pandas DataFrames, downloads with the full engine.

::

    import tcia_fetch as tf

    tf.collections()                                   # DataFrame: Collection
    tf.modalities("HNSCC")                             # DataFrame: Modality
    df = tf.series(collection="HNSCC", modality="CT")  # getSeries rows, numeric counts, datetimes
    chosen = df[df.ImageCount > 100]
    tf.series_size(chosen)                             # TotalSizeInBytes, ObjectCount per series
    report = tf.download(chosen, out="data/")          # verified, resumable; report.done, .failed

Every function works in a plain script and inside a running event loop (Jupyter, IPython, an
async app: the work then runs on a private loop in a worker thread); async code can await the
``*_async`` twins instead. pandas comes with ``pip install 'tcia-fetch[pandas]'`` and is imported
only when a DataFrame is built (:mod:`tcia_fetch.notebook.frames`).
"""

from tcia_fetch.notebook._api import (
    DownloadReport,
    EmptyResultWarning,
    body_parts,
    body_parts_async,
    collections,
    collections_async,
    configure,
    download,
    download_async,
    manufacturers,
    manufacturers_async,
    modalities,
    modalities_async,
    patients,
    patients_async,
    series,
    series_async,
    series_size,
    series_size_async,
    studies,
    studies_async,
)

__all__ = [
    "DownloadReport",
    "EmptyResultWarning",
    "body_parts",
    "body_parts_async",
    "collections",
    "collections_async",
    "configure",
    "download",
    "download_async",
    "manufacturers",
    "manufacturers_async",
    "modalities",
    "modalities_async",
    "patients",
    "patients_async",
    "series",
    "series_async",
    "series_size",
    "series_size_async",
    "studies",
    "studies_async",
]
