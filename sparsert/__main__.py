"""`python -m sparsert ...` is the `sparsert` command."""

import sys

from .cli import main

sys.exit(main())
