"""`python -m gateway` runs the command line, as the console script does."""
import sys

from gateway.cli import main

sys.exit(main())
