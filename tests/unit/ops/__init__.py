"""Unit tests of gateway.ops."""
