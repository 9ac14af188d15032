"""Few-shot benchmark: NanoNet over HTTP vs. a logistic-head baseline vs. fine-tuning (run.py)."""
