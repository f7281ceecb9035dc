"""The symbolizer against real binaries: a PIE program and a shared library built here with gcc,
arm-linux-gnueabihf-gcc and aarch64-linux-gnu-gcc, run (natively or under qemu-user) to capture real
return addresses, load biases and address ranges; then dumps carrying them are symbolized like the
board's would be."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HOSTPY = Path(__file__).resolve().parents[2] / "hostpy"
if (
    str(HOSTPY) not in sys.path
):  # the package may not be installed when only the tests are run
    sys.path.insert(0, str(HOSTPY))

from membt_host.protocol import (  # noqa: E402  (after the sys.path line above)
    Dump,
    Group,
    Module,
    Stack,
    encode_record,
    escape_text,
    group_fields,
    module_fields,
    stack_fields,
)
from membt_host.symbolize import Frame, Symbolizer, read_elf  # noqa: E402

LEAF_C = r"""
#include <execinfo.h>
__attribute__((noinline)) int mbt_capture(void **out, int max)
{
    int n = backtrace(out, max); /* CAPTURE */
    __asm__ volatile("" ::: "memory");
    return n;
}
__attribute__((noinline)) int leaf_alloc(void **out, int max)
{
    int n = mbt_capture(out, max); /* CALL-CAPTURE */
    __asm__ volatile("" ::: "memory");
    return n;
}
"""

MAIN_C = r"""
#define _GNU_SOURCE
#include <link.h>
#include <stdio.h>
#include <unistd.h>
int leaf_alloc(void **out, int max);
static int modules(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size; (void)data;
    unsigned long lo = ~0UL, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD) continue;
        if (ph->p_vaddr < lo) lo = ph->p_vaddr;
        if (ph->p_vaddr + ph->p_memsz > hi) hi = ph->p_vaddr + ph->p_memsz;
    }
    char self[4096] = "";
    const char *name = info->dlpi_name;
    if (name[0] == 0) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) self[n] = 0;
        name = self;
    }
    printf("M %lx %lx %lx %s\n", (unsigned long)info->dlpi_addr, (unsigned long)info->dlpi_addr + lo,
           (unsigned long)info->dlpi_addr + hi, name);
    return 0;
}
static inline __attribute__((always_inline)) int helper(void **out, int max)
{
    return leaf_alloc(out, max); /* CALL-LEAF */
}
__attribute__((noinline)) int outer(void **out, int max)
{
    int n = helper(out, max); /* INLINE-SITE */
    __asm__ volatile("" ::: "memory");
    return n;
}
int main(void)
{
    void *frames[16];
    int n = outer(frames, 16); /* CALL-OUTER */
    for (int i = 0; i < n; i++) printf("A %lx\n", (unsigned long)frames[i]);
    dl_iterate_phdr(modules, NULL);
    return 0;
}
"""

CFLAGS = ["-g", "-O1", "-funwind-tables", "-fno-omit-frame-pointer"]
ARMHF_ROOT = Path("/usr/arm-linux-gnueabihf")
AARCH64_ROOT = Path("/usr/aarch64-linux-gnu")


def line_of(source: str, marker: str) -> int:
    return next(
        n for n, text in enumerate(source.splitlines(), 1) if f"/* {marker} */" in text
    )


@dataclass(frozen=True)
class Board:
    """A program run on the 'board': its binaries and what the recorder would report."""

    name: str
    app: Path
    lib: Path
    addrs: tuple[int, ...]  # backtrace() from inside the library, innermost first
    modules: tuple[tuple[int, int, int, str], ...]  # load bias, lo, hi, path
    compiler: str
    workdir: Path

    def module_by_path(self, path: Path) -> tuple[int, int, int, str]:
        return next(m for m in self.modules if m[3] == str(path))

    def dump(
        self, paths: dict[str, str] | None = None, shift: int = 0, thumb: bool = False
    ) -> Dump:
        """The dump the recorder would print; `paths` renames modules as the board sees them,
        `shift` loads everything elsewhere, `thumb` sets bit 0 as a raw ARM capture may."""
        modules = {}
        for i, (bias, lo, hi, path) in enumerate(self.modules, 1):
            copy = read_elf(Path(path)) if Path(path).is_file() else None
            board_path = (paths or {}).get(path, path)
            modules[i] = Module(
                i,
                bias + shift,
                lo + shift,
                hi + shift,
                copy.build_id if copy else None,
                board_path,
            )
        addrs = [(a + shift) | (1 if thumb else 0) for a in self.addrs]
        return Dump(
            number=1,
            complete=True,
            begin={"pid": 1, "up_ms": 1000},
            modules=modules,
            stacks={7: Stack(7, False, addrs)},
            groups=[Group(7, 3, 96, 3, 96, 5000, "main")],
        )


def build_board(name: str, compiler: str, runner: list[str], workdir: Path) -> Board:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "leaf.c").write_text(LEAF_C)
    (workdir / "main.c").write_text(MAIN_C)
    lib, app = workdir / "libleaf.so", workdir / "app"
    subprocess.run(
        [compiler, *CFLAGS, "-fPIC", "-shared", "-o", lib, workdir / "leaf.c"],
        check=True,
    )
    subprocess.run(
        [
            compiler,
            *CFLAGS,
            "-fPIE",
            "-pie",
            "-o",
            app,
            workdir / "main.c",
            lib,
            "-Wl,-rpath,$ORIGIN",
        ],
        check=True,
    )
    out = subprocess.run(
        [*runner, str(app)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    addrs = tuple(
        int(line.split()[1], 16) for line in out.splitlines() if line.startswith("A ")
    )
    modules = []
    for line in out.splitlines():
        if line.startswith("M "):
            _, bias, lo, hi, path = line.split(" ", 4)
            modules.append((int(bias, 16), int(lo, 16), int(hi, 16), path))
    return Board(name, app, lib, addrs, tuple(modules), compiler, workdir)


def need(tool: str, why: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed: needed {why}")


@pytest.fixture(scope="module", params=["x86_64", "armhf", "aarch64"])
def board(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Board:
    workdir = tmp_path_factory.mktemp(f"board-{request.param}")
    if request.param == "x86_64":
        need("gcc", "to build the native test program")
        return build_board("x86_64", "gcc", [], workdir)
    if request.param == "aarch64":
        need("aarch64-linux-gnu-gcc", "to build the aarch64 test program (gcc-aarch64-linux-gnu)")
        need("qemu-aarch64", "to run the aarch64 test program (qemu-user)")
        need("aarch64-linux-gnu-addr2line", "to symbolize aarch64 code (binutils-aarch64-linux-gnu)")
        return build_board(
            "aarch64", "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", str(AARCH64_ROOT)], workdir
        )
    need(
        "arm-linux-gnueabihf-gcc",
        "to build the armhf test program (gcc-arm-linux-gnueabihf)",
    )
    need("qemu-arm", "to run the armhf test program (qemu-user)")
    need(
        "arm-linux-gnueabihf-addr2line",
        "to symbolize armhf code (binutils-arm-linux-gnueabihf)",
    )
    return build_board(
        "armhf", "arm-linux-gnueabihf-gcc", ["qemu-arm", "-L", str(ARMHF_ROOT)], workdir
    )


def app_frames(
    frames: tuple[Frame, ...],
) -> list[tuple[str | None, str | None, int | None, bool]]:
    """The frames of our own code: function, source file name, line, inlined."""
    return [
        (f.function, Path(f.file).name if f.file else None, f.line, f.inlined)
        for f in frames
        if f.module is not None and Path(f.module).name in ("app", "libleaf.so")
    ]


def expected_frames() -> list[tuple[str, str, int, bool]]:
    return [
        ("leaf_alloc", "leaf.c", line_of(LEAF_C, "CALL-CAPTURE"), False),
        ("helper", "main.c", line_of(MAIN_C, "CALL-LEAF"), True),
        ("outer", "main.c", line_of(MAIN_C, "INLINE-SITE"), False),
        ("main", "main.c", line_of(MAIN_C, "CALL-OUTER"), False),
    ]


def test_pie_and_shared_library_give_function_file_and_line(board: Board) -> None:
    symbolizer = Symbolizer([Path("/")])
    stack = symbolizer.symbolize(board.dump())[7]
    # mbt_capture is the recorder's (by its name): hidden; the app's frames follow in call order
    assert [f.function for f in stack.frames][:1] == ["leaf_alloc"], stack.frames
    assert app_frames(stack.frames)[:4] == expected_frames()
    leaf = stack.frames[0]
    bias = board.module_by_path(board.lib)[0]
    assert leaf.module == str(board.lib) and leaf.offset == board.addrs[1] - bias
    assert len(stack.key) == len(board.addrs) - 1  # every frame but the hidden one
    assert stack.key[0][0] == read_elf(board.lib).build_id


def test_same_code_path_has_the_same_key_wherever_it_is_loaded(board: Board) -> None:
    symbolizer = Symbolizer([Path("/")])
    here = symbolizer.symbolize(board.dump())[7]
    moved = Symbolizer([Path("/")]).symbolize(board.dump(shift=0x10000000))[7]
    assert here.key == moved.key and here.frames == moved.frames


def test_arm_thumb_bit_is_cleared_before_lookup(board: Board) -> None:
    if board.name != "armhf":
        pytest.skip("the Thumb bit exists on ARM only")
    plain = Symbolizer([Path("/")]).symbolize(board.dump())[7]
    thumb = Symbolizer([Path("/")]).symbolize(board.dump(thumb=True))[7]
    assert app_frames(thumb.frames)[:4] == expected_frames()
    assert [(f.function, f.file, f.line) for f in thumb.frames] == [
        (f.function, f.file, f.line) for f in plain.frames
    ]


def fake_sysroot(board: Board, root: Path, app: Path, lib: Path) -> dict[str, str]:
    """Place `app` and `lib` in `root` where the board keeps them; returns the board's module paths."""
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    shutil.copy(app, root / "usr/bin/app")
    shutil.copy(lib, root / "usr/lib/libleaf.so")
    return {str(board.app): "/usr/bin/app", str(board.lib): "/usr/lib/libleaf.so"}


def strip_tool(board: Board, tool: str) -> str:
    return board.compiler.removesuffix("gcc") + tool


def test_stripped_copy_stays_raw_until_symbols_dir_has_the_unstripped_one(
    board: Board, tmp_path: Path
) -> None:
    stripped_app, stripped_lib = (
        tmp_path / "app.stripped",
        tmp_path / "libleaf.stripped",
    )
    strip = strip_tool(board, "strip")
    subprocess.run([strip, "--strip-all", "-o", stripped_app, board.app], check=True)
    subprocess.run([strip, "--strip-all", "-o", stripped_lib, board.lib], check=True)
    paths = fake_sysroot(board, tmp_path / "rootfs", stripped_app, stripped_lib)
    dump = board.dump(paths)

    bare = Symbolizer([tmp_path / "rootfs"])
    stack = bare.symbolize(dump)[7]
    ours = [f for f in stack.frames if f.module in paths.values()]
    assert ours and all(f.function is None for f in ours), (
        "a stripped copy must not give names"
    )
    assert ours[0].describe() == f"/usr/lib/libleaf.so+{ours[0].offset:#x}"
    assert any("/usr/lib/libleaf.so" in p and "stripped" in p for p in bare.problems), (
        bare.problems
    )

    # the unstripped copies under any name in --symbols are found by build-id
    symbols = tmp_path / "symbols" / "deep"
    symbols.mkdir(parents=True)
    shutil.copy(board.app, symbols / "some-name")
    shutil.copy(board.lib, symbols / "other-name.so")
    found = Symbolizer([tmp_path / "rootfs"], [tmp_path / "symbols"]).symbolize(dump)[7]
    assert app_frames(found.frames)[:4] == expected_frames()
    assert found.frames[0].module == "/usr/lib/libleaf.so"


def test_build_id_debug_layout_is_found(board: Board, tmp_path: Path) -> None:
    debug_root = tmp_path / "debug"
    objcopy = strip_tool(board, "objcopy")
    for binary in (board.app, board.lib):
        build_id = read_elf(binary).build_id
        target = debug_root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([objcopy, "--only-keep-debug", binary, target], check=True)
    paths = {
        str(board.app): "/gone/app",
        str(board.lib): "/gone/libleaf.so",
    }  # no file at these paths
    stack = Symbolizer([], [debug_root]).symbolize(board.dump(paths))[7]
    assert app_frames(stack.frames)[:4] == expected_frames()


def test_copy_with_another_build_id_is_refused_and_said(
    board: Board, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "leaf.c").write_text(
        LEAF_C.replace(
            "int n = backtrace", "int spare = 1; (void)spare;\n    int n = backtrace"
        )
    )
    rebuilt = other / "libleaf.so"
    subprocess.run(
        [board.compiler, *CFLAGS, "-fPIC", "-shared", "-o", rebuilt, other / "leaf.c"],
        check=True,
    )
    theirs, ours = read_elf(rebuilt).build_id, read_elf(board.lib).build_id
    assert theirs != ours
    paths = fake_sysroot(board, tmp_path / "rootfs", board.app, rebuilt)

    symbolizer = Symbolizer([tmp_path / "rootfs"])
    stack = symbolizer.symbolize(board.dump(paths))[7]
    expected = (
        f"module /usr/lib/libleaf.so: {tmp_path / 'rootfs/usr/lib/libleaf.so'} has build-id {theirs}, "
        f"the board's is {ours}; not used"
    )
    assert expected in symbolizer.problems
    lib_frames = [f for f in stack.frames if f.module == "/usr/lib/libleaf.so"]
    assert lib_frames and all(f.function is None for f in lib_frames), (
        "never a name from the wrong binary"
    )
    # the program itself matches and is still symbolized
    assert [f.function for f in stack.frames if f.module == "/usr/bin/app"][:3] == [
        "helper",
        "outer",
        "main",
    ]


def test_module_paths_cannot_leave_the_sysroot(board: Board, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    paths = fake_sysroot(board, root, board.app, board.lib)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(
        board.lib, outside / "libleaf.so"
    )  # a perfect match, but outside the sysroot
    (root / "usr/lib/libleaf.so").unlink()
    (root / "usr/lib/libleaf.so").symlink_to("../../../outside/libleaf.so")

    for board_path in (
        "../../outside/libleaf.so",
        "/usr/lib/../../../outside/libleaf.so",
        "/usr/lib/libleaf.so",
    ):
        symbolizer = Symbolizer([root])
        stack = symbolizer.symbolize(board.dump({**paths, str(board.lib): board_path}))[
            7
        ]
        lib_frames = [f for f in stack.frames if f.module == board_path]
        assert lib_frames and all(f.function is None for f in lib_frames), board_path
        refused = [
            p
            for p in symbolizer.problems
            if board_path in p and "not looked up under --sysroot" in p
        ]
        assert refused, symbolizer.problems
        assert ("'..'" in refused[0]) == (".." in board_path), refused

    # a symlink with an absolute target resolves inside the sysroot, as on the board
    (root / "usr/lib/libleaf.so").unlink()
    (root / "lib").mkdir()
    shutil.copy(board.lib, root / "lib/libleaf.so.1")
    (root / "usr/lib/libleaf.so").symlink_to("/lib/libleaf.so.1")
    stack = Symbolizer([root]).symbolize(board.dump(paths))[7]
    assert stack.frames[0].function == "leaf_alloc"


def test_no_addr2line_installed_is_one_clear_problem(
    board: Board, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(
        "PATH", str(tmp_path)
    )  # an empty directory: no addr2line of any kind
    symbolizer = Symbolizer([Path("/")])
    stack = symbolizer.symbolize(board.dump())[7]
    assert all(f.function is None for f in stack.frames)
    machine = {"armhf": "ARM", "aarch64": "AARCH64"}.get(board.name, "X86_64")
    said = [
        p
        for p in symbolizer.problems
        if p.startswith(f"no addr2line for {machine} code")
    ]
    assert len(said) == 1, symbolizer.problems


def test_one_addr2line_run_per_module_and_answers_cached(
    board: Board, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    real = (
        shutil.which(strip_tool(board, "addr2line"))
        if board.name != "x86_64"
        else shutil.which("addr2line")
    )
    wrapper = tmp_path / "addr2line-counting"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    symbolizer = Symbolizer([Path("/")], addr2line=str(wrapper))
    first = symbolizer.symbolize(board.dump())[7]
    runs = log.read_text().splitlines()
    assert sorted(
        Path(r.split()[-1]).name for r in runs if "libleaf" in r or r.endswith("/app")
    ) == ["app", "libleaf.so"]
    assert len(runs) == len({r.split()[-1] for r in runs}), (
        runs
    )  # never two runs for one module
    second = symbolizer.symbolize(board.dump())[7]
    assert log.read_text().splitlines() == runs, "the second dump asked addr2line again"
    assert first == second


def test_cli_replay_reports_symbolized_frames(board: Board, tmp_path: Path) -> None:
    dump = board.dump()
    lines = [
        encode_record(
            1,
            0,
            "B",
            [
                "pid=1",
                "up_ms=1000",
                "leak_age_ms=500",
                f"exe={escape_text(str(board.app))}",
            ],
        )
    ]
    lines.append(
        encode_record(
            1,
            1,
            "C",
            ["live_blocks=3", "live_bytes=96", "old_blocks=3", "old_bytes=96"],
        )
    )
    for m in dump.modules.values():
        lines.append(encode_record(1, len(lines), "M", module_fields(m)))
    lines.append(encode_record(1, len(lines), "S", stack_fields(Stack(7, False, board.addrs))))
    lines.append(encode_record(1, len(lines), "G", group_fields(Group(7, 3, 96, 3, 96, 5000, "main"))))
    counts = [
        f"lines={len(lines) + 1}",
        f"modules={len(dump.modules)}",
        "stacks=1",
        "groups=1",
        "groups_total=1",
    ]
    lines.append(encode_record(1, len(lines), "E", counts))
    capture, report = tmp_path / "console.log", tmp_path / "report.json"
    capture.write_bytes(b"".join(lines))
    sysroot = {"armhf": str(ARMHF_ROOT), "aarch64": str(AARCH64_ROOT)}.get(board.name, "/")
    env = {**os.environ, "PYTHONPATH": str(HOSTPY)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "membt_host",
            "--file",
            str(capture),
            "--sysroot",
            "/",
            "--sysroot",
            sysroot,
            "--json",
            str(report),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (suspect,) = json.loads(report.read_text())["suspects"]
    frames = [
        (f["function"], Path(f["file"]).name if f["file"] else None, f["line"])
        for f in suspect["frames"]
    ]
    assert frames[:4] == [(fn, file, line) for fn, file, line, _ in expected_frames()]
    assert suspect["frames"][0]["module"] == str(board.lib)
    assert (
        suspect["frames"][0]["offset"]
        == f"{board.addrs[1] - board.module_by_path(board.lib)[0]:#x}"
    )
