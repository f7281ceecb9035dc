"""Start the real parts: the LD_PRELOADed leaky-server (natively, under qemu-arm or qemu-aarch64) and membt-host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import finish, stop

QEMU_ARM = "qemu-arm"
ARMHF_SYSROOT = Path("/usr/arm-linux-gnueabihf")
QEMU_AARCH64 = "qemu-aarch64"
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")

# Short ages and intervals so that a few seconds of leaky-server give enough dumps to tell a
# growing leak from a cache that filled up and stayed flat.
LEAK_AGE_S = "1"
INTERVAL_S = "0.5"


@dataclass(frozen=True)
class Target:
    """One build directory of the recorder and how to run its programs on this machine."""

    name: str                 # "x86_64", "armhf" or "aarch64"
    build: Path               # build/<name>/ with lib/libmembt.so and bin/leaky-server
    runner: list[str]         # [] natively, the qemu-user command line for armhf and aarch64
    symbols: list[str]        # membt-host options that find the unstripped program and libraries
    slowdown: float           # how much longer everything takes there (qemu emulates)

    @property
    def preload(self) -> Path:
        return self.build / "lib" / "libmembt.so"

    @property
    def leaky_server(self) -> Path:
        return self.build / "bin" / "leaky-server"

    def recorder_env(self, output: str, **extra: str) -> dict[str, str]:
        return {"MEMBT_LEAK_AGE": LEAK_AGE_S, "MEMBT_INTERVAL": INTERVAL_S, "MEMBT_OUTPUT": output,
                "MEMBT_FORMAT": "wire", "LD_PRELOAD": str(self.preload), **extra}

    def symbol_args(self) -> list[str]:
        return list(self.symbols)


def native_target(build: Path) -> Target:
    """This machine is the board: every module path the recorder reports is a real file under /."""
    return Target("x86_64", build, [], ["--sysroot", "/"], 1.0)


def emulated_target(name: str, build: Path, qemu: str, sysroot: Path) -> Target:
    """qemu-user with the Debian cross libraries as the board's root: the program and libmembt are
    found by build-id in the build directory, libc by its path under the sysroot."""
    return Target(name, build, [qemu, "-L", str(sysroot)], ["--sysroot", str(sysroot), "--symbols", str(build)], 4.0)


def armhf_target(build: Path) -> Target:
    return emulated_target("armhf", build, QEMU_ARM, ARMHF_SYSROOT)


def aarch64_target(build: Path) -> Target:
    return emulated_target("aarch64", build, QEMU_AARCH64, AARCH64_SYSROOT)


def start_leaky_server(target: Target, seconds: float, output: str, log: Path,
                       pass_fds: tuple[int, ...] = (), **extra_env: str) -> subprocess.Popen:
    """Run leaky-server for `seconds` with the recorder preloaded, writing its dumps to `output`.
    Under qemu-user the recorder's environment goes to the guest with -E, not to qemu itself."""
    recorder_env = target.recorder_env(output, **extra_env)
    argv = [str(target.leaky_server), f"{seconds:g}"]
    env = dict(os.environ)
    if target.runner:
        guest = [arg for name, value in recorder_env.items() for arg in ("-E", f"{name}={value}")]
        argv = [*target.runner, *guest, *argv]
    else:
        env.update(recorder_env)
    with open(log, "ab") as log_file:
        return subprocess.Popen(argv, env=env, pass_fds=pass_fds, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=log_file, start_new_session=True)


def membt_host_argv() -> list[str]:
    """The installed console script, or the module run by this Python when only the package is importable."""
    script = shutil.which("membt-host")
    return [script] if script else [sys.executable, "-m", "membt_host"]


@dataclass
class HostResult:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None   # the --json file, when one was asked for and written

    def describe(self) -> str:
        return f"membt-host exit {self.returncode}\n--- stderr ---\n{self.stderr[-4000:]}\n" \
               f"--- stdout ---\n{self.stdout[-4000:]}"


class HostRun:
    """membt-host running in the background, its output kept in files under `workdir`."""

    def __init__(self, args: list[str], workdir: Path, name: str = "host", stdin: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = workdir / f"{name}.out", workdir / f"{name}.err"
        self.json_path = Path(args[args.index("--json") + 1]) if "--json" in args else None
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*membt_host_argv(), *args], stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL if stdin is None else stdin,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> HostResult:
        finish(self.proc, timeout, "membt-host")
        return self.result()

    def stop(self) -> None:
        stop(self.proc)

    def result(self) -> HostResult:
        report = None
        if self.json_path is not None and self.json_path.exists():
            report = json.loads(self.json_path.read_text())
        return HostResult(self.proc.returncode, self.stdout_path.read_text(errors="replace"),
                          self.stderr_text(), report)


def run_host(args: list[str], workdir: Path, timeout: float, name: str = "host") -> HostResult:
    """membt-host run to its end (a file source, a bad option)."""
    run = HostRun(args, workdir, name)
    try:
        return run.wait(timeout)
    finally:
        run.stop()
