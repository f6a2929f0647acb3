"""`python -m model.train`: the same as `mmserve train`."""

from model.train.cli import main

main()
