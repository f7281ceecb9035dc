"""Turn parser output into plain JSON data, the form the vectors' expected files are written in."""

from __future__ import annotations

import dataclasses

from membt_host.protocol import Dump, Parser


def dump_to_json(dump: Dump) -> dict:
    data = dataclasses.asdict(dump)
    data.pop("_by_address")  # module_of's index, not part of the record
    # JSON object keys are strings; ids keep their order of appearance
    data["modules"] = {str(k): v for k, v in data["modules"].items()}
    data["stacks"] = {str(k): v for k, v in data["stacks"].items()}
    return data


def parse_all(data: bytes, chunk: int | None = None) -> tuple[list[Dump], Parser]:
    parser = Parser()
    dumps: list[Dump] = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        dumps += parser.feed(data[i : i + step])
    dumps += parser.close()
    return dumps, parser


def parse_to_json(data: bytes, chunk: int | None = None) -> dict:
    dumps, parser = parse_all(data, chunk)
    return {
        "dumps": [dump_to_json(d) for d in dumps],
        "stats": {k: v for k, v in parser.stats.items() if k != "bytes"},
        "noise": list(parser.noise),
    }
