"""``python -m ntkal.cli``: the ``ntkal`` command."""

import sys

from ntkal.cli import main

sys.exit(main())
