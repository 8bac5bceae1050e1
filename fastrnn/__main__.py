"""``python -m fastrnn``: the same command line as ``fastrnn``."""
import sys

from .cli import main

sys.exit(main())
