"""DKIM signing of outbound mail: the signer and its keys."""
