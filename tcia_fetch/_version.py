"""The package version: the one place it is written (``pyproject.toml`` reads it through hatch).

A constant rather than ``importlib.metadata.version()``: that call imports the metadata machinery
(email parsing, zip paths) and scans ``sys.path`` for distributions, about 45 ms of every
``tcia-fetch`` start-up, which a 600-tiny-series run pays on a 2.5 s wall clock.
"""

__version__ = "0.1.0"
