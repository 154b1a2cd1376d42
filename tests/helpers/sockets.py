"""Which addresses a process tree listens on (psutil): for checking that a multi-worker cell
listens on loopback only, by the addresses its sockets are bound to, never by sending
anything to an address beyond loopback."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

import psutil


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's view
    return (mapped or address).is_loopback


def listening(root: psutil.Process) -> set[tuple[str, int]]:
    """(address, port) of every listening socket of ``root`` and its descendants, now."""
    found: set[tuple[str, int]] = set()
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


def run_watching_sockets(command: list[str], cwd: Path, env: dict, timeout: float
                         ) -> tuple[subprocess.CompletedProcess, set[tuple[str, int]]]:
    """Run ``command`` to its end, polling its process tree's listening sockets every 50 ms;
    its output goes through files (a full pipe cannot stall it while it is watched)."""
    out, err = cwd / "watched.stdout", cwd / "watched.stderr"
    seen: set[tuple[str, int]] = set()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True)
        try:
            root = psutil.Process(process.pid)
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                seen |= listening(root)
                time.sleep(0.05)
            returncode = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return subprocess.CompletedProcess(command, returncode, out.read_text(), err.read_text()), seen
