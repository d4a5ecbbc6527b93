"""The ``fieldgate`` command: one module per subcommand, :mod:`gateway.cli.main` builds the parser."""
