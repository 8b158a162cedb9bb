"""Unit tests of gateway.spool."""
