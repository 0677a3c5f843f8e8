"""Machines: config, providers (cloud APIs), command runners, node updater and the `cluster` CLI."""
