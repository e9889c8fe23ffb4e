"""`python -m histopipe` is the `histopipe` command."""

import sys

from histopipe.cli import main

sys.exit(main())
