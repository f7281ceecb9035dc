"""Run one process and measure it, through the small `launch` helper (launch.c): wall time from
fork to reap and peak RSS from wait4, with a clean environment."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Variables that would change what a run measures if they leaked in from the caller's shell.
_SCRUBBED_PREFIXES = ("MEMBT_", "LD_PRELOAD", "LSAN_OPTIONS", "ASAN_OPTIONS", "MALLOC_")

LAUNCH = Path(__file__).resolve().parent.parent / "build" / "bench" / "launch"


@dataclass
class Run:
    wall_s: float
    maxrss_kib: int  # largest RSS of the process and the descendants it waited for
    returncode: int  # negative: killed by that signal
    stdout: str
    stderr_tail: str
    timed_out: bool


def clean_env() -> dict[str, str]:
    """The caller's environment without anything that would change what a run measures."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}


def run(cmd: list[str], env_extra: dict[str, str], timeout_s: float, cwd: Path | None = None) -> Run:
    """Run cmd under launch with env_extra set for cmd alone; output goes to files, not pipes, so a
    chatty tool cannot stall on them."""
    with tempfile.TemporaryDirectory(prefix="membt-run-") as tmp:
        result_file, out_file, err_file = (Path(tmp) / name for name in ("result", "stdout", "stderr"))
        with out_file.open("wb") as out, err_file.open("wb") as err:
            launcher = subprocess.run(
                [
                    str(LAUNCH),
                    str(result_file),
                    str(max(1, int(timeout_s))),
                    *(f"{k}={v}" for k, v in env_extra.items()),
                    "--",
                    *cmd,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=clean_env(),
                cwd=cwd,
                check=False,
            )
        stderr = err_file.read_bytes().decode(errors="replace")
        fields = result_file.read_text().split() if result_file.exists() else []
        if launcher.returncode != 0 or len(fields) != 4:
            raise RuntimeError(f"launch failed ({launcher.returncode}): {stderr.strip()[-300:]}")
        wall_ns, maxrss, code, timed_out = (int(f) for f in fields)
        return Run(
            wall_s=wall_ns / 1e9,
            maxrss_kib=maxrss,
            returncode=code,
            stdout=out_file.read_bytes().decode(errors="replace"),
            stderr_tail=stderr[-2000:],
            timed_out=bool(timed_out),
        )
