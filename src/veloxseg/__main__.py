"""``python -m veloxseg`` (also what ``torchrun -m veloxseg`` runs)."""

import sys

from .cli import main

sys.exit(main())
