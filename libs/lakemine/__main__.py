"""`python -m lakemine` is the same as the `lakemine` console script."""

import sys

from lakemine.cli import main

sys.exit(main())
