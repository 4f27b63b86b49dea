"""Training: the loop (loop.py), checkpoints (checkpoint.py), DDP (distributed.py) and the train command (run.py)."""
