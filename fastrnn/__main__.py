"""``python -m fastrnn``: the same command line as ``fastrnn``."""
import sys

from .lm.cli import main

sys.exit(main())
