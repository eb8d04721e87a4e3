"""Scale-out on a Dask distributed cluster (``--scheduler``); see runner.py."""
