"""`python -m pretrainlab ...` (what torchrun launches: torchrun -m pretrainlab train ...)."""

import sys

from .cli import exit_without_teardown, main

code = main()
if sys.argv[1:2] == ["train"]:  # a process that imported torch: its interpreter teardown takes about a second
    exit_without_teardown(code)
sys.exit(code)
