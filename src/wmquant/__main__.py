"""`python -m wmquant ...` is the same as the `wmquant` command."""

import sys

from .cli import main

sys.exit(main())
