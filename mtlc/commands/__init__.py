"""Sub-commands of the ``mtlc`` CLI, one module per area, each with ``register(subparsers)``."""
