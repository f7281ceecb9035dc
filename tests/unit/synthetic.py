"""Synthetic dumps for analysis and reporter tests: call stacks by name, series by numbers."""

from __future__ import annotations

from membt_host.protocol import Dump, Group, Module, Stack
from membt_host.symbolize import Frame, SymStack


def sym_stack(name: str, module: str = "/usr/bin/app", build_id: str = "ab12") -> SymStack:
    """A symbolized stack whose code path is `name` (offset derived from the name)."""
    offset = 0x1000 + sum(map(ord, name))
    frames = (
        Frame(name, "app.c", 10, module, offset),
        Frame("main", "app.c", 99, module, 0x900),
    )
    return SymStack(((build_id, offset), (build_id, 0x900)), frames, False)


def dump(
    number: int,
    up_ms: int,
    groups: dict[str, tuple[int, int, int, int]],
    pid: int = 100,
    complete: bool = True,
    groups_total: int | None = None,
    thread: str = "main",
) -> tuple[Dump, dict[int, SymStack]]:
    """groups: name -> (live_blocks, live_bytes, old_blocks, old_bytes)."""
    stacks: dict[int, SymStack] = {}
    d = Dump(
        number=number,
        complete=complete,
        begin={"pid": pid, "up_ms": up_ms, "interval_ms": 1000, "leak_age_ms": 2000},
        counters={
            "live_blocks": sum(g[0] for g in groups.values()),
            "live_bytes": sum(g[1] for g in groups.values()),
            "old_blocks": sum(g[2] for g in groups.values()),
            "old_bytes": sum(g[3] for g in groups.values()),
            "dropped_blocks": 0,
            "truncated_stacks": 0,
        },
        modules={1: Module(1, 0, 0x400000, 0x500000, "ab12", "/usr/bin/app")},
        end={"groups_total": len(groups) if groups_total is None else groups_total},
        problems=[] if complete else [f"dump {number}: line 3 missing"],
    )
    for i, (name, (lb, lby, ob, oby)) in enumerate(sorted(groups.items()), 1):
        stacks[i] = sym_stack(name)
        d.stacks[i] = Stack(i, False, [0x401000 + i])
        d.groups.append(Group(i, lb, lby, ob, oby, 3000 if ob else 500, thread))
    return d, stacks
