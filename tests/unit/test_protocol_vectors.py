"""The parser against the shared wire test vectors: tests/data/wire/<name>.txt and the expected <name>.json."""

import json
from pathlib import Path

import pytest

from wire_json import parse_to_json

WIRE = Path(__file__).resolve().parents[1] / "data" / "wire"
VECTORS = sorted(p for p in WIRE.glob("*.txt") if p.with_suffix(".json").exists())


def test_every_vector_has_expected_output():
    assert VECTORS, "no vectors found"
    assert {p.stem for p in WIRE.glob("*.txt")} == {p.stem for p in VECTORS}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda p: p.stem)
@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_vector(vector: Path, chunk: int | None):
    expected = json.loads(vector.with_suffix(".json").read_text())
    assert parse_to_json(vector.read_bytes(), chunk) == expected


def test_basic_vector_reads_as_documented():
    """Spot checks written by hand from docs/protocol.md, independent of the expected file."""
    got = parse_to_json((WIRE / "basic.txt").read_bytes())
    (dump,) = got["dumps"]
    assert dump["complete"] and dump["problems"] == []
    assert dump["number"] == 3 and dump["begin"]["pid"] == 4242 and dump["begin"]["exe"] == "/usr/bin/membt-demo"
    assert dump["modules"]["1"]["load_bias"] == 0x55D0C0A00000
    assert dump["modules"]["2"]["build_id"] is None
    assert dump["stacks"]["1"]["truncated"] is True
    assert dump["stacks"]["2"]["addrs"][-1] == 0x7F3E5C029D90
    assert [g["thread"] for g in dump["groups"]] == ["thread0", "worker 1"]
    assert got["stats"]["corrupt_lines"] == 0 and got["stats"]["complete_dumps"] == 1
