"""Unit tests of gateway.smtpd."""
