"""Entry point: `python -m trainer [train|evaluate|sweep|preview|promote] ...`."""

import sys

from trainer.cli import main

sys.exit(main())
