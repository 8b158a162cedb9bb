"""Unit tests of gateway.tls."""
