"""``python -m fourdvar``: the command line of :mod:`fourdvar.app.cli`."""

import sys

from .app.cli import main

sys.exit(main())
