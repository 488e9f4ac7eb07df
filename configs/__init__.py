"""Experiment configs (``get_config()`` per file), installed as ``r1ov_configs`` so recipes can build on each other
and ``r1ov demo`` finds its default; pass any of them by path with ``--config``."""
