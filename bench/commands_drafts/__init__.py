"""Command modules waiting to move into ``bench/commands/`` (each: ``add_parser(subparsers)``,
``run(args) -> int``), written beside ``bench/cli.py`` while another change splits it."""
