"""``python -m tiercache`` runs the ``tiercache`` command."""

import sys

from .cli import main

sys.exit(main())
