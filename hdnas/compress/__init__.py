"""Stage 3: compression of trained nets (DRC channel pruning and its baselines)."""
