"""`python -m m3diff …` is the `m3diff` command."""
import sys

from m3diff.cli import main

sys.exit(main())
