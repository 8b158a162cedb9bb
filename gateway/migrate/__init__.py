"""Migrations from other set-ups: the ServerContainers mail-gateway image's environment."""
