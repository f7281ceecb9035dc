"""Build what the benchmark runs: the workload variants (plain gcc) and the recorder (scons)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = REPO / "build" / "bench"

COMMON = ["-O2", "-g", "-funwind-tables", "-pthread", "-Wall", "-Wextra", "-Werror"]


@dataclass(frozen=True)
class Variant:
    name: str
    compiler: str
    flags: tuple[str, ...]
    about: str


VARIANTS = [
    Variant("fp", "gcc", ("-fno-omit-frame-pointer",), "x86_64, frame pointers kept"),
    Variant("nofp", "gcc", ("-fomit-frame-pointer",), "x86_64, frame pointers omitted (distribution default)"),
    Variant(
        "lsan", "gcc", ("-fno-omit-frame-pointer", "-fsanitize=leak"), "x86_64, -fsanitize=leak, frame pointers kept"
    ),
    Variant("armhf", "arm-linux-gnueabihf-gcc", (), "armhf (Thumb-2, gcc default), unwind tables"),
]


@dataclass
class Built:
    binaries: dict[str, Path]  # variant name -> executable
    skipped: dict[str, str]  # variant name -> why it was not built
    commands: dict[str, str]  # variant name -> the compile command


def build_launcher() -> None:
    """The measuring helper (launch.c); without it nothing can be measured, so a failure raises."""
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", str(BENCH / "launch.c"), "-o", str(OUT / "launch")], check=True
    )


def build_workloads() -> Built:
    OUT.mkdir(parents=True, exist_ok=True)
    built = Built({}, {}, {})
    source = BENCH / "workload.c"
    for v in VARIANTS:
        if shutil.which(v.compiler) is None:
            built.skipped[v.name] = f"{v.compiler} not installed"
            continue
        target = OUT / f"workload-{v.name}"
        cmd = [v.compiler, *COMMON, *v.flags, str(source), "-o", str(target)]
        built.commands[v.name] = " ".join([v.compiler, *COMMON, *v.flags, "workload.c"])
        result = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            built.skipped[v.name] = f"compile failed: {result.stderr.strip()[:300]}"
            continue
        built.binaries[v.name] = target
    return built


@dataclass
class Recorder:
    lib: dict[str, Path]  # "x86_64" / "armhf" -> libmembt.so
    skipped: dict[str, str]
    commit: str


def build_recorder(tree: Path, run_scons: bool) -> Recorder:
    """libmembt.so for x86_64 and armhf from the source tree `tree` (the repository, or an export
    of one commit), built with the project's scons when asked."""
    rec = Recorder({}, {}, _git_head(tree))
    for target, args in (("x86_64", []), ("armhf", ["arm=1"])):
        lib = tree / "build" / target / "lib" / "libmembt.so"
        if run_scons and (tree / "SConstruct").exists() and shutil.which("scons"):
            result = subprocess.run(
                ["scons", "-Q", "-j2", *args, str(lib.relative_to(tree))],  # only the library is needed
                check=False,
                cwd=tree,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                rec.skipped[target] = "scons " + " ".join(args) + " failed: " + result.stderr.strip()[-300:]
                continue
        if lib.exists() and not _exports(lib, "membt_init"):
            rec.skipped[target] = f"{lib} does not export membt_init (recorder not written yet?)"
        elif lib.exists():
            rec.lib[target] = lib
        elif target not in rec.skipped:
            rec.skipped[target] = f"{lib} not built (no SConstruct yet, or scons failed)"
    return rec


def _exports(lib: Path, symbol: str) -> bool:
    """Whether the shared library defines symbol in its dynamic symbol table."""
    from elftools.elf.elffile import ELFFile

    with lib.open("rb") as f:
        dynsym = ELFFile(f).get_section_by_name(".dynsym")
        if dynsym is None:
            return False
        return any(s.name == symbol and s["st_shndx"] != "SHN_UNDEF" for s in dynsym.iter_symbols())


def _git_head(tree: Path) -> str:
    """The commit the recorder was built from: git describe, or the MEMBT_COMMIT file of an export."""
    stamp = tree / "MEMBT_COMMIT"
    if stamp.exists():
        return stamp.read_text().strip()
    result = subprocess.run(
        ["git", "describe", "--always", "--dirty"], check=False, cwd=tree, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cores() -> int:
    return os.cpu_count() or 1
