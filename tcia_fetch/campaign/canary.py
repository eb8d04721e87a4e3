"""The canary sweep (reliability.md C5, C7, I6): credentials and tokens never reach any output.

The CLI runs against the fake's legacy v2 API with ``TCIA_FETCH_USERNAME``/``TCIA_FETCH_PASSWORD``
set to canary values. Tokens are expired mid-run (so the refresh path runs too), one series
fails for good (so error paths write their messages), and a second run uses a wrong password
(so the authentication failure message is written). A third run meets a server that echoes
what it received (issue 14): the token endpoint answers 500 quoting the posted form (the
password, URL-encoded) twice before it works, then a query answers 400 listing the request
headers (``Authorization: Bearer <token>``). Then every byte the program wrote is
searched for the password, the user name and every token the fake issued (read back from the
fake's request log: bearer headers and refresh-token forms): stdout, stderr, the ``--report``
file, everything under the destination (journal segments and the zstd snapshot decompressed,
reports, metadata.csv), and ``/proc/<pid>/cmdline`` sampled while the process ran.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_plus

import zstandard

from tcia_fetch.campaign.process import serve_in_thread, start_cli
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, LoadModel

__all__ = ["CANARY_PASSWORD", "CANARY_USER", "SecretsResult", "run_secret_sweep"]

CANARY_USER = "canary-user-7f3a91"
#: ``+`` and ``/`` make the form-encoded echo differ from the password itself.
CANARY_PASSWORD = "CANARY-pw+5d1e/7b2c9a"
_WRONG_PASSWORD = "CANARY-wrong-pw-0b8e44"
_RUN_TIMEOUT_S = 180.0


@dataclass
class SecretsResult:
    """Where canaries were found (must be empty) and how much was searched."""

    leaks: list[str] = field(default_factory=list)
    places_searched: int = 0
    bytes_searched: int = 0
    canaries: int = 0
    tokens_issued: int = 0
    exit_codes: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "leaks": self.leaks,
            "places_searched": self.places_searched,
            "bytes_searched": self.bytes_searched,
            "canaries": self.canaries,
            "tokens_issued": self.tokens_issued,
            "exit_codes": self.exit_codes,
            "problems": self.problems,
        }


def _catalog() -> Catalog:
    return Catalog.generate(
        seed=41,
        collections=1,
        patients_per_collection=2,
        series_per_study=3,
        instances_per_series=(2, 4),
        instance_bytes=(8_000, 20_000),
    )


def _readable(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".zst":
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            return reader.read()
    return data


def _run_sampling_cmdline(
    args: list[str], env: dict[str, str], cmdlines: list[bytes]
) -> tuple[int, bytes, bytes]:
    proc = start_cli(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + _RUN_TIMEOUT_S
    proc_file = Path(f"/proc/{proc.pid}/cmdline")
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            cmdlines.append(proc_file.read_bytes())
        except OSError:
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return proc.returncode, stdout, stderr


def run_secret_sweep(workdir: Path) -> SecretsResult:
    """Run the CLI with canary credentials, then search everything it wrote."""
    result = SecretsResult()
    catalog = _catalog()
    failing = catalog.series[0].uid
    fake = FakeNBIA(
        catalog,
        faults=FaultPlan(rules=[FaultRule(FaultKind.FLIP_BYTE, series_uid=failing, times=None)]),
        users={CANARY_USER: CANARY_PASSWORD},
        load=LoadModel(bytes_per_s_per_connection=60_000),
    )
    job = workdir / "job.toml"
    job.write_text(
        f'[download]\nconcurrency = 3\n[[query]]\ncollection = ["{catalog.series[0].collection}"]\n',
        encoding="utf-8",
    )
    out = workdir / "out"
    report = workdir / "report.json"
    outputs: list[tuple[str, bytes]] = []
    cmdlines: list[bytes] = []
    with serve_in_thread(fake) as server:
        args = [
            "run",
            str(job),
            "--out",
            str(out),
            "--base-url",
            server.legacy_base_url(2),
            "--report",
            str(report),
        ]
        env = {"TCIA_FETCH_USERNAME": CANARY_USER, "TCIA_FETCH_PASSWORD": CANARY_PASSWORD}

        def expire_when_downloading() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(r.endpoint.startswith("getImage") for r in list(fake.request_log)):
                    fake.expire_tokens()
                    return
                time.sleep(0.01)

        expirer = threading.Thread(target=expire_when_downloading, daemon=True)
        expirer.start()
        code, stdout, stderr = _run_sampling_cmdline(args, env, cmdlines)
        expirer.join(timeout=5)
        result.exit_codes.append(code)
        outputs += [("stdout of run 1", stdout), ("stderr of run 1", stderr)]
        wrong = {"TCIA_FETCH_USERNAME": CANARY_USER, "TCIA_FETCH_PASSWORD": _WRONG_PASSWORD}
        code, stdout, stderr = _run_sampling_cmdline(args, wrong, cmdlines)
        result.exit_codes.append(code)
        outputs += [
            ("stdout of run 2 (wrong password)", stdout),
            ("stderr of run 2 (wrong password)", stderr),
        ]
        log = list(fake.request_log)
    echoing = FakeNBIA(
        catalog,
        faults=FaultPlan(
            rules=[FaultRule(FaultKind.ECHO_TOKEN, times=2), FaultRule(FaultKind.ECHO_HEADERS, times=1)]
        ),
        users={CANARY_USER: CANARY_PASSWORD},
    )
    with serve_in_thread(echoing) as server:
        args = ["run", str(job), "--out", str(workdir / "out-echo"), "--report", str(report)]
        args += ["--base-url", server.legacy_base_url(2)]
        code, stdout, stderr = _run_sampling_cmdline(args, env, cmdlines)
        result.exit_codes.append(code)
        outputs += [
            ("stdout of run 3 (echoing server)", stdout),
            ("stderr of run 3 (echoing server)", stderr),
        ]
        if report.is_file():
            outputs.append(("--report of run 3 (echoing server)", report.read_bytes()))
        echo_log = list(echoing.request_log)
    if not any(r.status == 500 for r in echo_log) or not any(r.status == 400 for r in echo_log):
        result.problems.append("run 3: the server echoed nothing (no 500 from the token endpoint or no 400)")
    log += echo_log
    if result.exit_codes[0] != 1:
        result.problems.append(f"run 1 exited {result.exit_codes[0]}; expected 1 (one series fails for good)")
    if result.exit_codes[1] == 0:
        result.problems.append("run 2 with a wrong password succeeded")
    tokens = {r.headers["Authorization"].partition(" ")[2] for r in log if "Authorization" in r.headers}
    tokens |= {value for r in log for key, value in r.form_items if key == "refresh_token"}
    tokens.discard("")
    result.tokens_issued = len(tokens)
    if not any(r.status == 401 for r in log):
        result.problems.append("no request met an expired token: the refresh path did not run")
    canaries = {CANARY_PASSWORD: "password", _WRONG_PASSWORD: "wrong password"}
    canaries[quote_plus(CANARY_PASSWORD)] = "password (form-encoded)"
    canaries.update({token: "token" for token in tokens if len(token) >= 16})
    result.canaries = len(canaries)
    places = [*outputs, *[(f"/proc/<pid>/cmdline sample {i}", line) for i, line in enumerate(cmdlines)]]
    written = [*out.rglob("*"), *(workdir / "out-echo").rglob("*"), report]
    for path in sorted(p for p in written if p.is_file()):
        places.append((str(path.relative_to(workdir)), _readable(path)))
    for where, data in places:
        result.places_searched += 1
        result.bytes_searched += len(data)
        for canary, what in canaries.items():
            if canary.encode() in data:
                result.leaks.append(f"{what} found in {where}")
    if not cmdlines:
        result.problems.append("no /proc/<pid>/cmdline sample was taken")
    return result
