"""The recorder's life in a process: fork, an idle program, dumps on demand (signal and API), the static
firmware path, the text format, and the symbols libmembt.so exports."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

API = {"membt_config_init", "membt_init", "membt_record", "membt_unrecord", "membt_dump", "membt_get_stats",
       "membt_shutdown", "init_bt", "record_bt", "unrecord_bt"}
HOOKS = {"malloc", "calloc", "realloc", "reallocarray", "free", "posix_memalign", "aligned_alloc", "memalign",
         "valloc", "pvalloc", "strdup", "strndup", "asprintf", "vasprintf", "realpath", "munmap", "dlclose"}
# musl's crti.o gives a shared object the ELF init/fini entry points as dynamic symbols
LINKER = {"_init", "_fini"}
QUIET = {"MEMBT_QUIET": "1"}


# qemu-user 7.2 (Debian 12) aborts when the forked child of a threaded process starts a thread
# ("cpu == current_cpu" / "qemu_plugin_vcpu_init_hook" assertions), with or without membt; a child
# that keeps recording starts its own reporter thread, so that case runs only natively.
QEMU_FORK_THREADS = "qemu-user cannot start a thread in the forked child of a threaded process"


def busy_thread(target: Any) -> str:
    """fork-sample's allocating thread, except under ASan: GCC 12's ASan allocator is not fork-safe
    (a child can block on an allocator lock another thread held at fork; seen in 16 of 40 runs of
    fork-sample without membt), so there the forks come from a single-threaded parent."""
    return "0" if target.asan else "1"


@pytest.mark.parametrize("follow", ["on", "off"])
def test_fork_child_and_parent_both_finish(any_target: Any, follow: str) -> None:
    if follow == "on" and any_target.emulated:
        pytest.skip(QEMU_FORK_THREADS)
    forks = 30
    run = any_target.run([any_target.bin("fork-sample"), str(forks), busy_thread(any_target)],
                         {**QUIET, "MEMBT_FORK": follow, "MEMBT_INTERVAL": "0.1", "MEMBT_OUTPUT": "/dev/null"},
                         preload=True, timeout=120)
    assert run.returncode == 0, run.describe()
    assert f"fork-sample parent done: {forks} children, 0 failed".encode() in run.stdout
    assert run.stdout.count(b"fork-sample child") == forks


def test_forked_children_keep_recording(any_target: Any, parse_wire: Any) -> None:
    if any_target.emulated:
        pytest.skip(QEMU_FORK_THREADS)
    run = any_target.run([any_target.bin("fork-sample"), "3", busy_thread(any_target)],
                         {**QUIET, "MEMBT_OUTPUT": "stderr"}, preload=True)
    assert run.returncode == 0, run.describe()
    dumps = [dump for dump in parse_wire(run.stderr) if dump.complete and dump.begin["reason"] == "exit"]
    # one exit dump from each child and one from the parent, each under its own pid
    assert len({dump.begin["pid"] for dump in dumps}) == 4, run.describe()
    children = [d for d in dumps if any_target.groups_through(d, ["child_work"])]
    assert len(children) == 3, run.describe()


def test_an_idle_program_still_dumps(any_target: Any, parse_wire: Any) -> None:
    run = any_target.run([any_target.bin("idle-sample"), "3"],
                         {**QUIET, "MEMBT_INTERVAL": "0.5", "MEMBT_LEAK_AGE": "0.5", "MEMBT_OUTPUT": "stdout",
                          "MEMBT_DUMP_AT_EXIT": "0"}, preload=True)
    assert run.returncode == 0, run.describe()
    timer = [dump for dump in parse_wire(run.stdout) if dump.complete and dump.begin["reason"] == "timer"]
    assert len(timer) >= 2, run.describe()
    config = any_target.groups_through(timer[-1], ["load_config"])
    assert [(g.live_blocks, g.live_bytes, g.old_blocks) for g, _ in config] == [(3, 300, 3)]


def read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first stdout line (the sample's ready line)."""
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    deadline, data = time.monotonic() + timeout, b""
    while b"\n" not in data and time.monotonic() < deadline and process.poll() is None:
        data += process.stdout.read() or b""
        time.sleep(0.05)
    return data


def test_a_signal_asks_for_a_dump(any_target: Any, parse_wire: Any, tmp_path: Path) -> None:
    output = tmp_path / "dumps.wire"
    process = any_target.start([any_target.bin("idle-sample"), "60"],
                               {**QUIET, "MEMBT_INTERVAL": "0", "MEMBT_SIGNAL": "USR1", "MEMBT_LEAK_AGE": "0",
                                "MEMBT_OUTPUT": str(output), "MEMBT_DUMP_AT_EXIT": "0"}, preload=True)
    try:
        assert b"idle-sample sleeping" in read_line(process, 60 * (4 if any_target.emulated else 1))
        assert not output.exists() or output.stat().st_size == 0  # interval 0: no dump until asked
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        dumps: list[Any] = []
        while time.monotonic() < deadline and not any(d.complete for d in dumps):
            time.sleep(0.1)
            dumps = parse_wire(output.read_bytes()) if output.exists() else []
        assert process.poll() is None, "the dump signal killed the program"
    finally:
        process.kill()
        process.communicate()
    complete = [dump for dump in dumps if dump.complete]
    assert [dump.begin["reason"] for dump in complete] == ["signal"]
    config = any_target.groups_through(complete[0], ["load_config"])
    assert [(g.live_blocks, g.live_bytes) for g, _ in config] == [(3, 300)]


def test_static_firmware_path_dumps_on_request(any_target: Any, parse_wire: Any) -> None:
    program = any_target.bin("static-sample")
    needed = subprocess.run([any_target.tool("readelf"), "-d", str(program)], capture_output=True, text=True,
                            check=True).stdout
    assert "libmembt" not in needed  # the recorder is inside the program
    run = any_target.run([program], {**QUIET, "MEMBT_OUTPUT": "stdout", "MEMBT_LEAK_AGE": "0"})
    assert run.returncode == 0, run.describe()
    assert b"static-sample done" in run.stdout
    dumps = [dump for dump in parse_wire(run.stdout) if dump.complete]
    api = [dump for dump in dumps if dump.begin["reason"] == "api"]
    assert len(api) == 1, run.describe()
    routes = any_target.groups_through(api[0], ["reload_routes"])
    assert len(routes) == 1, routes
    group, frames = routes[0]
    assert frames[0] == "reload_routes" and "main" in frames, frames
    # 4 reloads x 8 strdup'ed names of 10 bytes ("route-G-I" + NUL), all kept, all old at leak age 0
    assert (group.live_blocks, group.live_bytes, group.old_blocks) == (32, 320, 32)
    assert not any_target.groups_through(api[0], ["process_packets"])  # every packet was freed


def test_wrap_flags_file_links_a_firmware(x86_64_target: Any, parse_wire: Any, tmp_path: Path) -> None:
    build = x86_64_target.build
    flags = (build / "share" / "membt" / "wrap.ldflags").read_text().split()
    wrapped = {flag.removeprefix("--wrap=") for flag in flags[0].removeprefix("-Wl,").split(",")}
    assert wrapped == HOOKS and flags[1:] == ["-lpthread", "-ldl"]
    source = tmp_path / "firmware.c"
    source.write_text('#include <stdlib.h>\n#include <string.h>\n#include "membt.h"\n'
                      'char *volatile kept;\n'
                      '__attribute__((noinline)) void remember(void) { kept = strdup("firmware"); }\n'
                      'int main(void) { remember(); return membt_dump() < 0; }\n')
    program = tmp_path / "firmware"
    pkg_env = {**os.environ, "PKG_CONFIG_PATH": str(build / "lib" / "pkgconfig")}
    pkg = subprocess.run(["pkg-config", "--cflags", "--libs", "membt-static"], capture_output=True, text=True,
                         env=pkg_env, check=True).stdout.split()
    assert str(build / "lib" / "libmembt.a") in [str(Path(arg).resolve()) for arg in pkg]
    subprocess.run(["gcc", "-O2", "-g", "-o", str(program), str(source), *pkg], check=True)
    run = x86_64_target.run([program], {**QUIET, "MEMBT_OUTPUT": "stdout"})
    assert run.returncode == 0, run.describe()
    dumps = [dump for dump in parse_wire(run.stdout) if dump.complete and dump.begin["reason"] == "api"]
    assert len(dumps) == 1
    assert [(g.live_blocks, g.live_bytes) for g, _ in x86_64_target.groups_through(dumps[0], ["remember"])] \
        == [(1, 9)]


def test_text_format_reads_like_the_seed(x86_64_target: Any, parse_wire: Any) -> None:
    run = x86_64_target.run([x86_64_target.bin("membt-demo"), "3"],
                            {**QUIET, "MEMBT_LEAK_AGE": "1", "MEMBT_INTERVAL": "1", "MEMBT_OUTPUT": "stdout",
                             "MEMBT_FORMAT": "text"})
    assert run.returncode == 0, run.describe()
    text = run.stdout.decode("ascii")
    assert "@MBT" not in text and parse_wire(run.stdout) == []
    assert "current malloc buffer count" in text and "[maybe leak]" in text and "thread thread0" in text
    assert all(line.isprintable() for line in text.splitlines())


@pytest.mark.parametrize("library", ["libmembt.so"])
def test_shared_library_exports_only_api_and_hooks(any_target: Any, library: str) -> None:
    listing = subprocess.run([any_target.tool("nm"), "-D", "--defined-only", str(any_target.build / "lib" / library)],
                             capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1].split("@")[0] for line in listing.splitlines() if line.split()[-2:-1] != ["A"]}
    assert exported >= API and exported >= HOOKS
    leaked = exported - API - HOOKS - LINKER
    assert leaked == set(), f"internal names leak out: {sorted(leaked)}"
