"""`python -m modelyard`: the same command line as `modelyard`."""

import sys

from modelyard.cli import main

sys.exit(main())
