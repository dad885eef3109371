"""`python -m edgeforge.cli`: the `edgeforge` command."""

from __future__ import annotations

import sys

from edgeforge.cli import main

sys.exit(main())
