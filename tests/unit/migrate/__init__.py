"""Unit tests of gateway.migrate."""
