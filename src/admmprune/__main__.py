"""``python -m admmprune ...``: the command line (importing the package first applies the
CPU defaults of ``admmprune.runtime`` before torch loads)."""

import sys

from admmprune.cli import main

sys.exit(main())
