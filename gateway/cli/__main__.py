"""``python -m gateway.cli``: the ``fieldgate`` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
