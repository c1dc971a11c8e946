"""dogestry: ship Docker images through dumb storage instead of a registry."""

__version__ = "0.1.0"
