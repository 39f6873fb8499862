"""Fixtures for model tests (see tests/conftest.py)."""
