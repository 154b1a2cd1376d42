"""``bench devices``: the CPUs and GPUs this machine has, and what each backend sees."""

from __future__ import annotations

import sys

from bench import devices
from bench.options import EXIT_OK, results_dir_parent, show


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("devices", parents=[results_dir_parent()],
                                   help="list the CPUs and GPUs this machine has, and the backends")
    parser.set_defaults(command=sys.modules[__name__])


def run(args) -> int:
    probes = {"tensorflow": devices.tensorflow_probe()}  # detect() reads it too: ask once
    show(devices.render_devices(devices.detect(probe=probes["tensorflow"]), probes))
    return EXIT_OK
