"""Subcommands that work on a data source in the lake (``convert``, ...), one module each.

Each module has ``build_parser()`` and ``run(argv, clock) -> (report, summary text)``; the CLI
(:mod:`insights_link.cli`) maps their errors to exit codes like ``export``'s.
"""
