"""Checks that plug into the pipeline; each module holds one :class:`gateway.policy.Policy`."""

from __future__ import annotations

from policies.relay_access import RelayAccess

REGISTRY = {RelayAccess.name: RelayAccess}
