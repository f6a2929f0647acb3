"""`python -m service`: the `mmserve` command; with no arguments, `serve`."""

import sys

from service.cli import main

main(sys.argv[1:] or ["serve"])
