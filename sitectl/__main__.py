"""`python -m sitectl`: what the systemd unit runs (the interpreter's own venv, no PATH)."""

import sys

from sitectl.main import main

sys.exit(main())
