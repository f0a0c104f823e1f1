"""``python -m vitpareto.search.cli``: the command line."""

import sys

from vitpareto.search.cli import main

sys.exit(main())
