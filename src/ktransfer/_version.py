"""The version of ktransfer, in a module of its own that any other module may import."""

__version__ = "0.1.0"
