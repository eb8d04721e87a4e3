"""``python -m tcia_fetch.testing serve ...``: run the fake NBIA as a process (benchmarks, demo).

Writes the bound port to ``--port-file`` once listening (write to a temporary name, then rename, so a
reader never sees a half-written number), logs to stderr, stops cleanly on SIGINT/SIGTERM and then, with
``--stats-file``, writes the server's counters as JSON.

``--fault`` syntax: ``KIND[:TARGET][,key=value...]`` where TARGET is a series UID, ``*`` (any series,
the default) or ``random=RATE``; e.g. ``--fault CUT:1.2.3,after_bytes=5000,times=2``,
``--fault RATE_LIMIT:random=0.05``, ``--fault WRONG_SIZE:1.2.3,delta_bytes=10,times=none``. Random kinds
share one rate: the sum of the rates given (capped at 1), kinds drawn uniformly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from tcia_fetch.testing._catalog import Catalog
from tcia_fetch.testing._faults import FaultKind, FaultPlan, FaultRule
from tcia_fetch.testing._lazy import LazyCatalog
from tcia_fetch.testing._load import LoadModel
from tcia_fetch.testing._server import FakeNBIA

logger = logging.getLogger("tcia_fetch.testing")

_UID_LINE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def manifest_series_uids(text: str) -> list[str]:
    """Series UIDs after ``ListOfSeriesToDownload=`` in a ``.tcia`` (order kept, duplicates dropped)."""
    uids: list[str] = []
    seen: set[str] = set()
    started = False
    for raw in text.lstrip("\ufeff").splitlines():
        line = raw.strip().rstrip(",")
        if not started:
            started = line.lower() == "listofseriestodownload="
            continue
        if _UID_LINE.match(line) and line not in seen:
            seen.add(line)
            uids.append(line)
    return uids


def _parse_value(text: str) -> object:
    lowered = text.lower()
    if lowered == "none":
        return None
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(text)
    return text


def parse_faults(specs: Sequence[str], seed: int) -> FaultPlan:
    """Turn ``--fault`` options into a FaultPlan (see the module docstring for the syntax)."""
    rules: list[FaultRule] = []
    random_kinds: list[FaultKind] = []
    random_rate = 0.0
    for spec in specs:
        head, *options = spec.split(",")
        kind_name, _, target = head.partition(":")
        try:
            kind = FaultKind[kind_name.strip().upper()]
        except KeyError as exc:
            raise SystemExit(
                f"--fault {spec!r}: unknown kind {kind_name!r}; known: {[k.name for k in FaultKind]}"
            ) from exc
        params: dict[str, object] = {}
        for option in options:
            key, _, value = option.partition("=")
            params[key.strip()] = _parse_value(value.strip())
        target = target.strip()
        if target.startswith("random="):
            random_rate += float(target.removeprefix("random="))
            random_kinds.append(kind)
            continue
        times = params.pop("times", 1)
        if times is not None and not isinstance(times, int):
            raise SystemExit(f"--fault {spec!r}: times must be an integer or none")
        try:
            rules.append(
                FaultRule(kind, series_uid=None if target in ("", "*") else target, times=times, **params)
            )
        except ValueError as exc:
            raise SystemExit(f"--fault {spec!r}: {exc}") from exc
    if random_kinds:
        return FaultPlan(
            rules=rules, random_rate=min(1.0, random_rate), random_kinds=tuple(random_kinds), seed=seed
        )
    return FaultPlan(rules=rules, seed=seed)


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(",")
    return int(low), int(high or low)


def build_parser() -> argparse.ArgumentParser:
    """The ``serve`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tcia_fetch.testing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the fake NBIA server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 = any free port")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    serve.add_argument("--stats-file", type=Path, help="write counters as JSON here at shutdown")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--collections", type=int, default=2)
    serve.add_argument("--patients-per-collection", type=int, default=2)
    serve.add_argument("--studies-per-patient", type=int, default=1)
    serve.add_argument("--series-per-study", type=int, default=2)
    serve.add_argument("--instances-per-series", type=_range, default=(2, 6), metavar="LOW[,HIGH]")
    serve.add_argument("--instance-bytes", type=_range, default=(2_000, 20_000), metavar="LOW[,HIGH]")
    serve.add_argument("--pixel-cache-bytes", type=int, default=512 * 1024 * 1024)
    serve.add_argument(
        "--lazy-series",
        type=int,
        default=0,
        metavar="N",
        help="serve N series derived on demand (LazyCatalog; 600,000 fine) instead of a generated catalog",
    )
    serve.add_argument(
        "--real-sizes", action="store_true", help="with --lazy-series: sizes from the real archive's mix"
    )
    serve.add_argument("--manifest", type=Path, action="append", default=[], help=".tcia whose UIDs to add")
    serve.add_argument("--restricted", action="append", default=[], help="series UID answered as non-public")
    serve.add_argument("--fault", action="append", default=[], help="KIND[:UID|*|random=RATE][,key=value...]")
    serve.add_argument("--rate-bytes-per-s", type=float, default=None)
    serve.add_argument("--total-rate-bytes-per-s", type=float, default=None, help="all downloads together")
    serve.add_argument("--first-byte-delay-s", type=float, default=0.0)
    serve.add_argument("--max-concurrent-downloads", type=int, default=None)
    serve.add_argument("--retry-after-s", type=float, default=1.0)
    serve.add_argument("--query-delay-s", type=float, default=0.0)
    serve.add_argument("--token-lifetime-s", type=float, default=7200.0)
    serve.add_argument("--no-legacy", action="store_true", help="serve v4 only")
    serve.add_argument(
        "--precompute-md5",
        action="store_true",
        help="hash every instance before listening, as the real server stores MD5s (for benchmarks)",
    )
    serve.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate, as TCIA does")
    serve.add_argument("--tls-key", type=Path, help="the certificate's PEM private key (with --tls-cert)")
    serve.add_argument("--log-level", default="INFO")
    return parser


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise SystemExit("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


async def _serve(args: argparse.Namespace) -> int:
    extra: list[str] = []
    for manifest in args.manifest:
        extra.extend(manifest_series_uids(manifest.read_text(encoding="utf-8", errors="replace")))
    catalog: Catalog = (
        LazyCatalog(
            count=args.lazy_series,
            seed=args.seed,
            collections=args.collections,
            series_per_study=args.series_per_study,
            instances_per_series=args.instances_per_series,
            instance_bytes=args.instance_bytes,
            sizes="real" if args.real_sizes else "range",
            pixel_cache_bytes=args.pixel_cache_bytes,
        )
        if args.lazy_series
        else _generated(args, extra)
    )
    if args.precompute_md5:
        await asyncio.get_running_loop().run_in_executor(None, lambda: catalog.warm(md5=True))
    return await _serve_catalog(args, catalog)


def _generated(args: argparse.Namespace, extra: list[str]) -> Catalog:
    return Catalog.generate(
        seed=args.seed,
        collections=args.collections,
        patients_per_collection=args.patients_per_collection,
        studies_per_patient=args.studies_per_patient,
        series_per_study=args.series_per_study,
        instances_per_series=args.instances_per_series,
        instance_bytes=args.instance_bytes,
        extra_series_uids=extra,
        pixel_cache_bytes=args.pixel_cache_bytes,
    )


async def _serve_catalog(args: argparse.Namespace, catalog: Catalog) -> int:
    fake = FakeNBIA(
        catalog,
        faults=parse_faults(args.fault, args.seed),
        load=LoadModel(
            bytes_per_s_per_connection=args.rate_bytes_per_s,
            first_byte_delay_s=args.first_byte_delay_s,
            max_concurrent_downloads=args.max_concurrent_downloads,
            retry_after_s=args.retry_after_s,
            query_delay_s=args.query_delay_s,
            total_bytes_per_s=args.total_rate_bytes_per_s,
        ),
        restricted_series=frozenset(args.restricted),
        legacy=not args.no_legacy,
        token_lifetime_s=args.token_lifetime_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with fake.serve(host=args.host, port=args.port, ssl_context=_server_tls(args)) as server:
        logger.info(
            "serving %d series (%d collections) at %s",
            len(catalog),
            len(catalog.collections),
            server.base_url,
        )
        if args.port_file is not None:
            _write_atomically(args.port_file, f"{server.port}\n")
        await stop.wait()
        logger.info("stopping")
    stats = fake.stats().as_dict()
    if args.stats_file is not None:
        _write_atomically(args.stats_file, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    logger.info("stats %s", json.dumps(stats, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
