"""Entry point of ``python -m bench`` (run from the repository root)."""

import sys

from bench.run import main

sys.exit(main())
