"""TLS: SSL contexts for the listeners and the relay client, certificate fingerprints, the local CA."""

# Files of the local CA in ``state_dir/tls`` (:mod:`gateway.tls.local_ca`), named here so that
# finding them does not load cryptography.
CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
SERVER_CERT_NAME = "server.crt"
SERVER_KEY_NAME = "server.key"
