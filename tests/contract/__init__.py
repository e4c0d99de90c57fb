"""Test suites every implementation of a Protocol must pass (see ``store_contract``)."""
