"""How much time the Ray layer of ``bench run --ray`` adds per cell, with the fake worker.

Starts a one-node Ray cluster on 127.0.0.1, runs CELLS fake cells through bench.fleet, then
the same cells directly with bench.process.run_worker in this process, and prints the median
per-cell wall time of each:

    PYTHONPATH=$PWD python tests/helpers/fleet_overhead.py [CELLS]

- direct: run_worker alone (the worker process from start to result);
- on the node: runner.execute for the cell inside its Ray task (worker + row + contention);
- through Ray: from the driver's submit to the rows back on the driver.
"""

import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(REPO),
                  BENCH_WORKER_COMMAND=shlex.join([sys.executable, str(REPO / "tests/helpers/fake_worker.py")]))
sys.path.insert(0, str(REPO / "tests"))

from ray.cluster_utils import Cluster  # noqa: E402
from test_fleet import SMALL_NODE, config, request  # noqa: E402

from bench import fleet, process, runner  # noqa: E402
from bench.devices import Device, Requested  # noqa: E402
from bench.files import read_json_object  # noqa: E402
from bench.launch import worker_environment  # noqa: E402


def main(cells: int) -> None:
    cfg = config(*range(32, 32 + cells))
    cluster = Cluster(initialize_head=True, head_node_args={**SMALL_NODE, "include_dashboard": False})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            outcome = fleet.run_fleet(request(Path(tmp), cluster.address, cfg), lambda _: None)
            timeline = read_json_object(outcome.out / fleet.FLEET_JSON)["timeline"]
            through_ray = [c["returned"] - c["submitted"] for c in timeline]
            on_node = [c["ended"] - c["started"] for c in timeline]
            cpu = Requested("cpu", Device("cpu", "CPU", "CPU"))
            direct = []
            for cell in runner.plan_cells(cfg, [cpu]):
                started = time.monotonic()
                done = process.run_worker(runner.cell_spec(cell, cfg).to_json(), worker_environment(cpu),
                                          Path(tmp) / "direct.log", 120)
                assert done.result is not None, done.reason
                direct.append(time.monotonic() - started)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    ms = {name: statistics.median(values) * 1000 for name, values in
          (("direct", direct), ("on the node", on_node), ("through Ray", through_ray))}
    print(f"{cells} fake cells, median wall time per cell: " + ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items()))
    print(f"Ray layer (through Ray - on the node): {ms['through Ray'] - ms['on the node']:.0f} ms per cell; "
          f"all the fleet adds (through Ray - direct): {ms['through Ray'] - ms['direct']:.0f} ms per cell")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
