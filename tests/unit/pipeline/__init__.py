"""Unit tests of gateway.pipeline."""
