"""``python -m entrypoints.cli ARGS`` runs the ``ledger`` command."""

import sys

from entrypoints.cli.main import main

sys.exit(main())
