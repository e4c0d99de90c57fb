"""Runs the store contract suite (tests/contract/store_contract.py) on every backend of
the ``store`` fixture (tests/conftest.py)."""

from tests.contract.store_contract import *  # noqa: F403
