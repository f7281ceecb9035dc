"""Shared test fixtures: one scons run per build directory and session, running a target's programs
(natively or through its toolchain's qemu-user runner), parsing wire dumps and naming their frames."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    from membt_host.protocol import Dump, Group, Parser, Stack
except ImportError:  # the package is not installed yet (pip install -e hostpy): use the checkout
    sys.path.insert(0, str(ROOT / "hostpy"))
    from membt_host.protocol import Dump, Group, Parser, Stack

# build directory name -> (toolchain file, scons variables)
TARGETS: dict[str, tuple[str, list[str]]] = {
    "x86_64": ("native", []),
    "x86_64-asan": ("native", ["asan=1"]),
    "armhf": ("arm-linux-gnueabihf", ["arm=1"]),
    "aarch64": ("aarch64-linux-gnu", ["CROSS=aarch64-linux-gnu-"]),
    "musl": ("musl", ["musl=1"]),
}
SCONS_TIMEOUT_S = 900


@cache
def load_toolchain(name: str) -> dict[str, Any]:
    values = runpy.run_path(str(ROOT / "toolchains" / f"{name}.py"))
    return {key: value for key, value in values.items() if key.isupper()}


@dataclass
class Run:
    returncode: int
    stdout: bytes
    stderr: bytes

    def describe(self) -> str:
        return (f"exit {self.returncode}\n--- stderr ---\n{self.stderr[-3000:].decode(errors='replace')}\n"
                f"--- stdout ---\n{self.stdout[-3000:].decode(errors='replace')}")


@dataclass(frozen=True)
class Target:
    """One build directory and how to run its programs on this machine."""

    name: str                  # a key of TARGETS: x86_64, x86_64-asan, armhf, aarch64, musl
    build: Path
    toolchain: dict[str, Any]

    @property
    def asan(self) -> bool:
        return self.name.endswith("-asan")

    @property
    def emulated(self) -> bool:
        return bool(self.toolchain["RUNNER"])

    @property
    def libmembt(self) -> Path:
        return self.build / "lib" / "libmembt.so"

    def bin(self, program: str) -> Path:
        return self.build / "bin" / program

    def tool(self, name: str) -> str:
        """A binutils program for this target's machine code (addr2line, nm, readelf)."""
        return self.toolchain["PREFIX"] + name

    def host_path(self, guest_path: str) -> Path:
        """Where a path the program saw (a module path in a dump) is on this machine."""
        sysroot = Path(self.toolchain["SYSROOT"])
        if sysroot != Path("/"):
            inside = sysroot / guest_path.lstrip("/")
            if inside.exists():
                return inside
        return Path(guest_path)

    def run(self, argv: Sequence[str | Path], env: Mapping[str, str] | None = None, preload: bool = False,
            timeout: float = 120) -> Run:
        """run_target: run a program of this target to its end; stdout and stderr are returned, not shown.
        `timeout` is for a native run; an emulated one gets four times as long."""
        command, process_env = self.command(argv, env, preload)
        result = subprocess.run(command, env=process_env, capture_output=True, stdin=subprocess.DEVNULL,
                                timeout=timeout * (4 if self.emulated else 1))
        return Run(result.returncode, result.stdout, result.stderr)

    def start(self, argv: Sequence[str | Path], env: Mapping[str, str] | None = None,
              preload: bool = False) -> subprocess.Popen[bytes]:
        """Start a program of this target in the background, stdout and stderr piped."""
        command, process_env = self.command(argv, env, preload)
        return subprocess.Popen(command, env=process_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def frame_functions(self, dump: Dump, stack: Stack) -> list[str | None]:
        """The function each frame of `stack` is in, per addr2line on the module's file (None: unknown).
        A return address points after its call: one less (without the Thumb bit) is inside the call."""
        names: list[str | None] = [None] * len(stack.addrs)
        by_module: dict[int, list[int]] = {}
        for index, addr in enumerate(stack.addrs):
            module = dump.module_of(addr)
            if module is not None:
                by_module.setdefault(module.id, []).append(index)
        for module_id, indexes in by_module.items():
            module = dump.modules[module_id]
            path = self.host_path(module.path)
            if not path.is_file():
                continue
            offsets = [f"{(stack.addrs[i] & ~1) - 1 - module.load_bias:x}" for i in indexes]
            result = subprocess.run([self.tool("addr2line"), "-f", "-e", str(path), *offsets],
                                    capture_output=True, text=True, timeout=60)
            lines = result.stdout.splitlines()
            for position, index in enumerate(indexes):
                if 2 * position < len(lines) and lines[2 * position] != "??":
                    names[index] = lines[2 * position]
        return names

    def groups_through(self, dump: Dump, functions: Iterable[str]) -> list[tuple[Group, list[str | None]]]:
        """(group, its frames' functions) for each group of `dump` whose stack passes through any of `functions`."""
        wanted = set(functions)
        found = []
        for group in dump.groups:
            stack = dump.stacks.get(group.stack_id)
            if stack is not None:
                names = self.frame_functions(dump, stack)
                if wanted & set(names):
                    found.append((group, names))
        return found

    def command(self, argv: Sequence[str | Path], env: Mapping[str, str] | None = None,
                preload: bool = False) -> tuple[list[str], dict[str, str]]:
        """argv and process environment that run a program of this target with `env` in its environment.
        Under qemu-user the program's variables go to the guest with -E: LD_PRELOAD must not reach qemu."""
        guest_env = dict(env or {})
        if preload:
            guest_env["LD_PRELOAD"] = str(self.libmembt)
        process_env = dict(os.environ)
        if self.asan:
            # LSan cannot run here (and the leaks are the point); the preloaded recorder must come
            # before the ASan runtime to see every allocation.
            process_env["ASAN_OPTIONS"] = "detect_leaks=0:verify_asan_link_order=0"
        command = [*self.toolchain["RUNNER"]]
        if self.toolchain["RUNNER_ENV_OPTION"]:
            for name, value in guest_env.items():
                command += [self.toolchain["RUNNER_ENV_OPTION"], f"{name}={value}"]
        else:
            process_env.update(guest_env)
        return [*command, *map(str, argv)], process_env


def _scons_argv() -> list[str]:
    scons = shutil.which("scons")
    return [scons] if scons else [sys.executable, "-m", "SCons"]


@cache
def built(name: str) -> Target:
    """Build `name` once per test session (scons itself skips what is up to date)."""
    toolchain_name, variables = TARGETS[name]
    toolchain = load_toolchain(toolchain_name)
    compiler = toolchain["CC"] or toolchain["PREFIX"] + "gcc"
    if shutil.which(compiler) is None:
        pytest.fail(f"{compiler} is not installed; tests/run-all.sh installs what the tests need")
    for program in toolchain["RUNNER"][:1]:
        if shutil.which(program) is None:
            pytest.fail(f"{program} is not installed (Debian package qemu-user); tests/run-all.sh installs it")
    result = subprocess.run([*_scons_argv(), "-Q", "-j2", *variables], cwd=ROOT, capture_output=True,
                            text=True, timeout=SCONS_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"scons {' '.join(variables)} failed ({result.returncode}):\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    build = ROOT / "build" / name
    toolchain_build_name = toolchain["NAME"] + ("-asan" if "asan=1" in variables else "")
    assert build.name == toolchain_build_name, f"toolchain builds {toolchain_build_name}, tests expect {name}"
    return Target(name, build, toolchain)


@pytest.fixture(scope="session")
def build_x86_64() -> Path:
    return built("x86_64").build


@pytest.fixture(scope="session")
def build_x86_64_asan() -> Path:
    return built("x86_64-asan").build


@pytest.fixture(scope="session")
def build_armhf() -> Path:
    return built("armhf").build


@pytest.fixture(scope="session")
def build_aarch64() -> Path:
    return built("aarch64").build


@pytest.fixture(scope="session")
def x86_64_target(build_x86_64: Path) -> Target:
    return built("x86_64")


@pytest.fixture(scope="session", params=["x86_64", "x86_64-asan", "armhf", "aarch64", "musl"])
def any_target(request: pytest.FixtureRequest) -> Target:
    """Every build the tests run: native, native with ASan, armhf under qemu-arm, aarch64 under
    qemu-aarch64, native on musl libc."""
    return built(request.param)


def parse_wire_bytes(data: bytes) -> list[Dump]:
    """Every dump in `data`, complete or not, through the host tool's own parser."""
    parser = Parser()
    dumps = parser.feed(data)
    return dumps + parser.close()


@pytest.fixture(scope="session")
def parse_wire() -> Callable[[bytes], list[Dump]]:
    """parse_wire(bytes) -> list[Dump] (test modules cannot import from a conftest reliably)."""
    return parse_wire_bytes
