"""`python -m coderflow.cli`: the same command line as the `coderflow` console script."""

from coderflow.cli import entry

entry()
