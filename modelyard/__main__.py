"""`python -m modelyard`: the same command line as `modelyard`."""

from modelyard.cli import entry

entry()
