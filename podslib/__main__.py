"""`python -m podslib ...` is the `pods` command."""

import sys

from podslib.lab.cli import main

sys.exit(main())
