"""Fault-injection tests: crashes, outages, a full disk, hung scanners, hostile clients, properties."""
