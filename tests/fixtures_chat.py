"""Fixtures for chat tests (see tests/conftest.py)."""
