"""TLS: SSL contexts for the listeners and the relay client, certificate fingerprints, the local CA."""
