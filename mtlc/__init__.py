"""mtlc: multi-task learning curves for measuring transfer between tasks."""

__version__ = "0.1.0"
