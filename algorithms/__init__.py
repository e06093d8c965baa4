"""The meta-RL methods of metarl-bench: one module per method, shared blocks in ``common``."""
