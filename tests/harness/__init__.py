"""Real network peers for end-to-end tests: an SMTP sink and a loopback DNS server."""
