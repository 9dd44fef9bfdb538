"""`python -m podslib ...` is the `pods` command."""

import sys

from .cli import main

sys.exit(main())
