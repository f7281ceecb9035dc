"""Fixtures for the recorder tests: the probe library (C call sites and racing threads) and a runner
that plays one driver.py scenario in a fresh Python process and parses the dump file it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from membt_host.protocol import Dump, Parser

HERE = Path(__file__).resolve().parent
SCENARIO_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def probe_library(x86_64_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """probe.c built the way an application would build against the recorder."""
    out = tmp_path_factory.mktemp("probe") / "libprobe.so"
    lib = x86_64_target.build / "lib"
    subprocess.run(["gcc", "-O2", "-g", "-funwind-tables", "-fPIC", "-shared", "-pthread", "-o", str(out),
                    str(HERE / "probe.c"), f"-I{x86_64_target.build / 'include'}", f"-L{lib}",
                    f"-Wl,-rpath,{lib}", "-lmembt"], check=True, timeout=120)
    return out


@dataclass
class ScenarioRun:
    result: dict[str, Any]
    output: Path         # the file the recorder wrote its dumps to
    stderr: str

    @property
    def dumps(self) -> list[Dump]:
        if not self.output.exists():
            return []
        parser = Parser()
        return parser.feed(self.output.read_bytes()) + parser.close()

    @property
    def dump(self) -> Dump:
        """The one dump a scenario asked for with membt_dump(), which must be complete (the dump the
        recorder writes when the process exits comes after it, with reason exit)."""
        dumps = [dump for dump in self.dumps if dump.begin.get("reason") == "api"]
        assert len(dumps) == 1, f"expected one dump, got {len(dumps)}\n{self.output.read_text(errors='replace')}"
        assert dumps[0].complete, f"incomplete dump: {dumps[0].problems}"
        return dumps[0]


Scenario = Callable[..., ScenarioRun]


@pytest.fixture
def scenario(x86_64_target: Any, probe_library: Path, tmp_path: Path) -> Scenario:
    """scenario(name, env=None, **args): run driver.py's `name` in a new process."""
    def run(name: str, env: dict[str, str] | None = None, **args: Any) -> ScenarioRun:
        output = tmp_path / f"{name}.wire"
        if name != "options":
            args = {"output": str(output), **args}
        process_env = {key: value for key, value in os.environ.items() if not key.startswith("MEMBT_")}
        process_env["MEMBT_DUMP_AT_EXIT"] = "0"  # the file then holds only what the scenario asked for
        process_env.update(env or {})
        completed = subprocess.run(
            [sys.executable, str(HERE / "driver.py"), str(x86_64_target.libmembt), str(probe_library), name,
             json.dumps(args)], capture_output=True, text=True, env=process_env, timeout=SCENARIO_TIMEOUT_S)
        assert completed.returncode == 0, f"scenario {name} exit {completed.returncode}\n{completed.stderr[-4000:]}"
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        return ScenarioRun(result, output, completed.stderr)
    return run
