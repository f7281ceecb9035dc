"""Raw return addresses to `function (file:line)`: find each module's unstripped copy on the PC
(by build-id under --symbols, by path under --sysroot), verify it, and ask the right addr2line.

Module paths and build-ids come from the board and are untrusted: they never leave the given
directories and never reach a shell.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from membt_host.protocol import Dump, Module, Stack

MAX_SYMLINKS = 40
MAX_INDEXED_FILES = 200_000
ADDR2LINE_TIMEOUT_S = 300

_HOST_MACHINE = {
    "x86_64": "EM_X86_64",
    "amd64": "EM_X86_64",
    "i386": "EM_386",
    "i686": "EM_386",
    "aarch64": "EM_AARCH64",
    "arm64": "EM_AARCH64",
    "armv7l": "EM_ARM",
    "armv6l": "EM_ARM",
    "mips": "EM_MIPS",
    "riscv64": "EM_RISCV",
}.get(platform.machine().lower())

# cross binutils by ELF machine (and byte order where it matters); llvm-addr2line reads them all
_CROSS_ADDR2LINE = {
    ("EM_ARM", True): ["arm-linux-gnueabihf-addr2line", "arm-linux-gnueabi-addr2line"],
    ("EM_AARCH64", True): ["aarch64-linux-gnu-addr2line"],
    ("EM_MIPS", True): ["mipsel-linux-gnu-addr2line", "mips64el-linux-gnuabi64-addr2line"],
    ("EM_MIPS", False): ["mips-linux-gnu-addr2line", "mips64-linux-gnuabi64-addr2line"],
    ("EM_X86_64", True): ["x86_64-linux-gnu-addr2line"],
    ("EM_386", True): ["i686-linux-gnu-addr2line"],
    ("EM_RISCV", True): ["riscv64-linux-gnu-addr2line"],
    ("EM_PPC", False): ["powerpc-linux-gnu-addr2line"],
    ("EM_PPC64", True): ["powerpc64le-linux-gnu-addr2line"],
}

_RECORDER_PREFIXES = ("mbt_", "membt_", "__wrap_")
_RECORDER_NAMES = frozenset({"record_bt"})
_VIRTUAL_MODULES = re.compile(r"(^|/)(linux-vdso|linux-gate)[^/]*$|^\[.*\]$")
_LOCATION = re.compile(r"^(.*):(\d+|\?)(?: \(discriminator \d+\))?$")
_ADDRESS_LINE = re.compile(r"^0x[0-9a-fA-F]+$")


@dataclass(frozen=True)
class Frame:
    """One frame of a call stack as shown to the user; several per address when code was inlined."""

    function: str | None
    file: str | None
    line: int | None
    module: str | None  # the module's path on the board; None when the address is in no module
    offset: int  # link-time address of the return address in the module (absolute when module is None)
    inlined: bool = False

    def describe(self) -> str:
        raw = f"{self.module}+{self.offset:#x}" if self.module else f"{self.offset:#x}"
        if self.function is None:
            return raw
        where = f"{self.file}:{self.line}" if self.file and self.line else (self.file or os.path.basename(raw))
        return f"{self.function} ({where})" + (" [inlined]" if self.inlined else "")


@dataclass(frozen=True)
class SymStack:
    """A call stack ready for analysis: `key` names the code path the same way in every dump and
    every run of the program (module identity and link-time offset of each frame)."""

    key: tuple
    frames: tuple[Frame, ...]
    truncated: bool


OVERFLOW_KEY: tuple = (("<overflow>", 0),)
OVERFLOW_STACK = SymStack(OVERFLOW_KEY, (), False)  # blocks whose stack the recorder could not keep


@dataclass(frozen=True)
class ElfCopy:
    path: Path
    build_id: str | None
    machine: str
    little_endian: bool
    has_symtab: bool
    has_debug: bool

    @property
    def quality(self) -> int:
        return 2 * self.has_debug + self.has_symtab


class Refused(Exception):
    """A module path that would leave the directory it is looked up in."""


def read_elf(path: Path) -> ElfCopy | None:
    """Build-id, machine and symbol presence of an ELF file; None for anything else."""
    try:
        with open(path, "rb") as stream:
            if stream.read(4) != b"\x7fELF":
                return None
            stream.seek(0)
            elf = ELFFile(stream)
            if elf.header.e_type == "ET_REL":
                return None
            build_id = None
            for section in elf.iter_sections():
                if section.header.sh_type == "SHT_NOTE":
                    for note in section.iter_notes():
                        if note["n_type"] == "NT_GNU_BUILD_ID":
                            build_id = str(note["n_desc"]).lower()
            if build_id is None:  # section headers stripped: the note is still in a PT_NOTE segment
                for segment in elf.iter_segments():
                    if segment.header.p_type == "PT_NOTE":
                        for note in segment.iter_notes():
                            if note["n_type"] == "NT_GNU_BUILD_ID":
                                build_id = str(note["n_desc"]).lower()
            symtab = elf.get_section_by_name(".symtab")
            return ElfCopy(
                path=path,
                build_id=build_id,
                machine=str(elf.header.e_machine),
                little_endian=elf.little_endian,
                has_symtab=symtab is not None and symtab.header.sh_type == "SHT_SYMTAB",
                has_debug=elf.get_section_by_name(".debug_info") is not None,
            )
    except (OSError, ELFError, ValueError, KeyError, AttributeError):
        return None


def resolve_inside(root: Path, board_path: str) -> Path:
    """Where `board_path` is under `root`, with symlinks followed as the board would follow them
    (an absolute link target starts again at `root`). Refuses '..' in the board's path and any
    link that climbs out of `root`."""
    root = Path(os.path.realpath(root))
    parts = [p for p in PurePosixPath(board_path).parts if p not in ("/", "", ".")]
    if ".." in parts:
        raise Refused("the path contains '..'")
    current, hops = root, 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if current == root:
                raise Refused(f"a symlink on the way leads out of {root}")
            current = current.parent
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise Refused("too many symlinks")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in PurePosixPath(target).parts if p != "/"] + parts
            continue
        current = candidate
    return current


def _inside(root: Path, path: Path) -> bool:
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


class SymbolDirs:
    """ELF files under the --symbols directories, found by build-id (indexed on first need)."""

    def __init__(self, dirs: Iterable[Path]) -> None:
        self.dirs = [Path(d) for d in dirs]
        self._index: dict[str, ElfCopy] | None = None
        self.notes: list[str] = []

    def find(self, build_id: str) -> ElfCopy | None:
        best: ElfCopy | None = None
        for d in self.dirs:
            for layout in (d / ".build-id", d):  # the debuginfo layout, or DIR itself is a .build-id dir
                candidate = layout / build_id[:2] / (build_id[2:] + ".debug")
                if candidate.is_file() and _inside(d, candidate):
                    copy = read_elf(candidate)
                    if copy is not None and copy.build_id == build_id and (best is None or copy.quality > best.quality):
                        best = copy
        indexed = self._indexed().get(build_id)
        if indexed is not None and (best is None or indexed.quality > best.quality):
            best = indexed
        return best

    def _indexed(self) -> dict[str, ElfCopy]:
        if self._index is None:
            self._index = {}
            seen = 0
            for d in self.dirs:
                for folder, _subdirs, files in os.walk(d):
                    for name in files:
                        seen += 1
                        if seen > MAX_INDEXED_FILES:
                            self.notes.append(f"--symbols: stopped indexing after {MAX_INDEXED_FILES} files")
                            return self._index
                        path = Path(folder) / name
                        if not _inside(d, path):
                            continue
                        copy = read_elf(path)
                        if copy is None or copy.build_id is None:
                            continue
                        known = self._index.get(copy.build_id)
                        if known is None or copy.quality > known.quality:
                            self._index[copy.build_id] = copy
        return self._index


def addr2line_candidates(machine: str, little_endian: bool) -> list[str]:
    names = list(_CROSS_ADDR2LINE.get((machine, little_endian), []))
    if machine == _HOST_MACHINE:
        names.insert(0, "addr2line")
    return names + ["llvm-addr2line"]


def parse_addr2line(output: str, count: int) -> list[list[tuple[str | None, str | None, int | None]]] | None:
    """Output of `addr2line -f -i -C -a` for `count` addresses: per address, innermost frame first."""
    results: list[list[tuple[str | None, str | None, int | None]]] = []
    lines = output.splitlines()
    i = 0
    while i < len(lines):
        if not _ADDRESS_LINE.match(lines[i]):
            return None
        i += 1
        chain = []
        while i < len(lines) and not _ADDRESS_LINE.match(lines[i]):
            if i + 1 >= len(lines):
                return None
            function, location = lines[i], lines[i + 1]
            i += 2
            m = _LOCATION.match(location)
            file, line = (m.group(1), m.group(2)) if m else (location, "?")
            chain.append(
                (
                    None if function in ("??", "") else function,
                    None if file in ("??", "") else file,
                    int(line) if line.isdigit() and int(line) > 0 else None,
                )
            )
        results.append(chain)
    return results if len(results) == count else None


def is_recorder_frame(module: str | None, chain: list[Frame]) -> bool:
    """Frames of the recorder itself (its library, its hooks, the seed's record_bt)."""
    if module and os.path.basename(module).startswith("libmembt"):
        return True
    function = chain[-1].function if chain else None  # the function that holds the address
    return bool(function and (function.startswith(_RECORDER_PREFIXES) or function in _RECORDER_NAMES))


class Symbolizer:
    """One per session: resolutions and addr2line answers are cached across dumps."""

    def __init__(self, sysroots: Iterable[Path] = (), symbol_dirs: Iterable[Path] = (), addr2line: str | None = None):
        self.sysroots = [Path(r) for r in sysroots]
        self.symbols = SymbolDirs(symbol_dirs)
        self.addr2line = addr2line
        self.problems: list[str] = []
        self._problem_set: set[str] = set()
        self._copies: dict[tuple[str | None, str], ElfCopy | None] = {}
        self._tools: dict[tuple[str, bool], str | None] = {}
        self._answers: dict[tuple[Path, int], tuple[Frame, ...]] = {}
        self._stacks: dict[tuple, SymStack] = {}

    def problem(self, text: str) -> None:
        if text not in self._problem_set:
            self._problem_set.add(text)
            self.problems.append(text)

    # -- finding the copy ------------------------------------------------------------------------

    def copy_for(self, module: Module) -> ElfCopy | None:
        key = (module.build_id, module.path)
        if key not in self._copies:
            self._copies[key] = self._find_copy(module)
        return self._copies[key]

    def _find_copy(self, module: Module) -> ElfCopy | None:
        if _VIRTUAL_MODULES.search(module.path) or not module.path:
            return None  # the vdso and friends exist only in the board's memory
        if not self.sysroots and not self.symbols.dirs:
            self.problem("no --sysroot or --symbols given: frames stay module+offset")
            return None
        stripped: ElfCopy | None = None
        if module.build_id and self.symbols.dirs:
            copy = self.symbols.find(module.build_id)
            if copy is not None and copy.quality:
                return copy
            stripped = copy or stripped
        for root in self.sysroots:
            try:
                path = resolve_inside(root, module.path)
            except Refused as why:
                self.problem(f"module {module.path}: not looked up under --sysroot {root}: {why}")
                continue
            if not path.is_file():
                continue
            copy = read_elf(path)
            if copy is None:
                self.problem(f"module {module.path}: {path} is not an ELF file; not used")
                continue
            if module.build_id and copy.build_id != module.build_id:
                self.problem(
                    f"module {module.path}: {path} has build-id {copy.build_id or 'none'}, "
                    f"the board's is {module.build_id}; not used"
                )
                continue
            if copy.quality:
                return copy
            stripped = stripped or copy
        if stripped is not None:
            self.problem(
                f"module {module.path}: {stripped.path} is stripped; frames stay module+offset "
                "(pass --symbols DIR holding the unstripped copy, found by build-id)"
            )
        else:
            bid = f" (build-id {module.build_id})" if module.build_id else ""
            self.problem(f"module {module.path}{bid}: no copy under --sysroot or --symbols; frames stay module+offset")
        return None

    def tool_for(self, copy: ElfCopy) -> str | None:
        if self.addr2line:
            return self.addr2line
        key = (copy.machine, copy.little_endian)
        if key not in self._tools:
            names = addr2line_candidates(*key)
            found = next((p for p in map(shutil.which, names) if p), None)
            if found is None:
                self.problem(
                    f"no addr2line for {copy.machine.removeprefix('EM_')} code ({', '.join(names)}: none installed); "
                    "frames stay module+offset (install binutils for that target or pass --addr2line)"
                )
            self._tools[key] = found
        return self._tools[key]

    # -- asking addr2line ------------------------------------------------------------------------

    def _lookup(self, copy: ElfCopy, module_path: str, vaddrs: list[int]) -> None:
        tool = self.tool_for(copy)
        answers: list | None = None
        if tool is not None:
            arm = copy.machine == "EM_ARM"
            # return addresses point after the call: step back into it (and drop the Thumb bit first)
            queries = [((v & ~1) if arm else v) - 1 for v in vaddrs]
            text = "".join(f"{max(q, 0):#x}\n" for q in queries)
            try:
                done = subprocess.run(
                    [tool, "-f", "-i", "-C", "-a", "-e", str(copy.path)],
                    input=text,
                    capture_output=True,
                    text=True,
                    errors="replace",
                    timeout=ADDR2LINE_TIMEOUT_S,
                    check=False,
                )
                answers = parse_addr2line(done.stdout, len(vaddrs)) if done.returncode == 0 else None
                if answers is None:
                    why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
                    self.problem(f"{tool} failed on {copy.path}: {why[0]}; frames stay module+offset")
            except (OSError, subprocess.TimeoutExpired) as error:
                self.problem(f"{tool} failed on {copy.path}: {error}; frames stay module+offset")
        for i, vaddr in enumerate(vaddrs):
            chain = answers[i] if answers else []
            frames = tuple(
                Frame(fn, file, line, module_path, vaddr, inlined=n < len(chain) - 1)
                for n, (fn, file, line) in enumerate(chain)
                if fn is not None or file is not None
            )
            self._answers[(copy.path, vaddr)] = frames or (Frame(None, None, None, module_path, vaddr),)

    # -- a whole dump ----------------------------------------------------------------------------

    def symbolize(self, dump: Dump) -> dict[int, SymStack]:
        """Every stack of the dump, plus stack 0 (the recorder's overflow bucket)."""
        pending: dict[ElfCopy, tuple[str, set[int]]] = {}
        placed: dict[int, list[tuple[Module | None, int]]] = {}
        for stack in dump.stacks.values():
            where = placed[stack.id] = []
            for addr in stack.addrs:
                module = dump.module_of(addr)
                if module is None or addr < module.load_bias:
                    where.append((None, addr))
                    continue
                vaddr = addr - module.load_bias
                where.append((module, vaddr))
                copy = self.copy_for(module)
                if copy is not None and (copy.path, vaddr) not in self._answers:
                    pending.setdefault(copy, (module.path, set()))[1].add(vaddr)
        for copy, (module_path, vaddrs) in pending.items():
            self._lookup(copy, module_path, sorted(vaddrs))
        result = {stack.id: self._stack(stack, placed[stack.id]) for stack in dump.stacks.values()}
        result[0] = OVERFLOW_STACK
        return result

    def _stack(self, stack: Stack, where: list[tuple[Module | None, int]]) -> SymStack:
        raw_key = tuple(self._identity(m, off) for m, off in where)
        cache_key = (raw_key, tuple(m.path if m else None for m, _ in where), stack.truncated)
        cached = self._stacks.get(cache_key)
        if cached is not None:
            return cached
        chains: list[tuple[tuple, tuple[Frame, ...]]] = []
        for (module, offset), ident in zip(where, raw_key, strict=True):
            copy = self.copy_for(module) if module else None
            if module is None:
                chain: tuple[Frame, ...] = (Frame(None, None, None, None, offset),)
            elif copy is None:
                chain = (Frame(None, None, None, module.path, offset),)
            else:
                chain = self._answers[(copy.path, offset)]
            chains.append((ident, chain))
        while chains and is_recorder_frame(chains[0][1][0].module, list(chains[0][1])):
            chains.pop(0)  # the recorder's own frames, from the innermost end only
        key = tuple(ident for ident, _ in chains) if chains else raw_key
        frames = tuple(frame for _, chain in chains for frame in chain)
        result = SymStack(key, frames, stack.truncated)
        self._stacks[cache_key] = result
        return result

    @staticmethod
    def _identity(module: Module | None, offset: int) -> tuple[str, int]:
        if module is None:
            return ("", offset)
        return (module.build_id or os.path.basename(module.path), offset)
