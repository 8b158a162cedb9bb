"""Sender authentication of inbound mail: SPF, DKIM verification, DMARC, and the policy that runs them."""
