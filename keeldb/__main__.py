"""`python -m keeldb` runs the CLI."""

import sys

from keeldb.cli.main import main

sys.exit(main())
