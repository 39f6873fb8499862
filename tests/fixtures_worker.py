"""Fixtures for worker tests (see tests/conftest.py)."""
