"""Unit tests of gateway.relay."""
