"""`python -m pretrainlab ...` (what torchrun launches: torchrun -m pretrainlab train ...)."""

import sys

from .cli import main

sys.exit(main())
