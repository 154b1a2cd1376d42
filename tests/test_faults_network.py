"""Ports of a multi-worker cell: a loopback cluster listens on loopback only.

Checked by the addresses the workers' sockets are bound to (psutil), never by sending
anything to an address beyond loopback.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cifar_model.distribution import is_loopback_cluster, listening_note

REPO = Path(__file__).resolve().parents[1]
TINY = ("--devices", "cpu", "--data", "synthetic", "--synthetic-images", "256", "--batch-sizes", "16",
        "--steps", "4", "--warmup", "1", "--no-peak", "--no-eval", "--precision", "fp32")


@pytest.mark.parametrize("cluster, loopback", [
    (("127.0.0.1:1", "localhost:2"), True), (("[::1]:3", "127.0.0.2:4"), True),
    (("10.0.0.1:4", "127.0.0.1:5"), False), (("node1:1",), False), ((), False),
])
def test_which_clusters_are_loopback(cluster, loopback):
    assert is_loopback_cluster(cluster) is loopback


def test_each_worker_says_where_it_listens_and_that_the_port_is_open():
    remote = ("10.0.0.1:7000", "10.0.0.2:7001")
    tensorflow = listening_note(remote, 1, "tensorflow")
    assert "0.0.0.0:7001" in tensorflow and "firewall" in tensorflow
    assert "loopback only: 127.0.0.1:7000" in listening_note(("127.0.0.1:7000", "127.0.0.1:7001"), 0, "jax")
    jax = listening_note(remote, 0, "jax")
    assert "[::]:7000" in jax and "firewall" in jax


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's view
    return (mapped or address).is_loopback


def _listening(root: psutil.Process) -> set[tuple[str, int]]:
    found = set()
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in processes:
        try:
            found |= {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.slow
def test_a_local_jax_multi_worker_cell_listens_on_loopback_only(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.Popen([sys.executable, "-m", "bench", "run", *TINY, "--backend", "jax", "--workers", "2",
                            "--out", str(tmp_path / "run")], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[tuple[str, int]] = set()
    try:
        root = psutil.Process(run.pid)
        deadline = time.monotonic() + 400
        while run.poll() is None and time.monotonic() < deadline:
            seen |= _listening(root)
            time.sleep(0.05)
        assert run.wait(timeout=30) == 0, run.stderr.read()[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
    assert seen, "no listening socket seen: the two-worker cell did not run"
    exposed = sorted(a for a in seen if not _loopback(a[0]))
    assert not exposed, f"listening beyond loopback: {exposed}"
    said = run.stderr.read()       # the run itself says where the cluster listens
    assert "worker 0 listening on loopback only: 127.0.0.1:" in said, said[-2000:]
