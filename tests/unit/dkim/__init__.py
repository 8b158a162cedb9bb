"""Unit tests of gateway.dkim."""
