"""Test support: what the tests share that is not a fixture (fixtures live in conftest.py files)."""
