"""Policies and how they run.

The policy interface, the pipeline runner, building the pipelines from the config, the Received: field.
"""
