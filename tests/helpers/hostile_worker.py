"""A worker that answers with a malformed result, one shape per batch size (:data:`HOSTILE`),
to show that one bad worker costs its cell's row and never the run (issue 20, group 5).
Any other batch size gets the fake worker's plausible result; ``--probe`` and ``--peak`` are
the fake worker's too."""

import json
import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # this checkout's bench, not an installed one
import fake_worker  # same folder: on sys.path when run as a script
from fake_results import fake_result

from bench.protocol import MARK, CellSpec, emit

DEEP = 100_000


def _records(change):
    def damage(result: dict) -> None:
        change(result["train"]["records"])
    return damage


def _set_first(key, value):
    return _records(lambda records: records[0].update({key: value}))


#: batch size -> (what is wrong, how a good result dict is damaged; None: the line itself is)
HOSTILE = {
    1: ("a line nested 100,000 deep", None),
    2: ("a step time that is text", _set_first("seconds", "0.1")),
    3: ("a step time that is NaN", _set_first("seconds", float("nan"))),
    4: ("a step time of zero", _set_first("seconds", 0.0)),
    5: ("a negative step time", _set_first("seconds", -0.1)),
    6: ("a record of zero steps", _set_first("steps", 0)),
    7: ("no record at all", _records(list.clear)),
    8: ("records that are not objects", _records(lambda records: records.__setitem__(0, 1))),
    9: ("a missing field", lambda result: result["train"].pop("math")),
    10: ("an unknown field", lambda result: result["train"].update(colour="blue")),
    11: ("a train that is not an object", lambda result: result.update(train=[1, 2])),
    12: ("a memory figure that is text", lambda result: result.update(peak_rss_bytes="1 GB")),
}


def damaged(batch_size: int) -> dict:
    """A good result for ``batch_size``, damaged as :data:`HOSTILE` says."""
    result = json.loads(json.dumps(fake_result(batch_size, [0.01] * 6, 2).to_dict()))   # as on the wire
    HOSTILE[batch_size][1](result)
    return result


def main():
    if sys.argv[1:]:
        return fake_worker.main()
    spec = CellSpec.from_json(sys.stdin.read())
    batch = spec.settings.batch_size
    emit("started", startup_seconds=0.1, pid=0, backend="tensorflow")
    if batch not in HOSTILE:
        emit("result", result=fake_result(batch, [0.01] * 6, 2).to_dict())
    elif HOSTILE[batch][1] is None:
        print(MARK + '{"event": "result", "result": ' + "[" * DEEP + "]" * DEEP + "}", flush=True)
    else:
        print(MARK + json.dumps({"event": "result", "result": damaged(batch)}), flush=True)


if __name__ == "__main__":
    main()
