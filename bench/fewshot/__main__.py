"""`python -m bench.fewshot` from the repo root: the same as `python bench/fewshot/run.py`."""

import sys

from bench.fewshot.run import main

sys.exit(main())
