"""Ports of a multi-worker cell: which clusters are loopback, and what each worker says about
where it listens. That a real two-worker JAX cell listens on loopback only is checked on the
JAX scaling run (tests/test_scale.py), by the addresses its sockets are bound to."""

from __future__ import annotations

import pytest

from cifar_model.distribution import is_loopback_cluster, listening_note


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
