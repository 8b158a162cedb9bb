"""Filtering SMTP smarthost gateway."""

__version__ = "0.1.0"
