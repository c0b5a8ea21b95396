"""Fixtures for the Jobs API tests: a real token-auth Ray head on 127.0.0.1 (see rayhead.py), started and
stopped by these tests alone, and a client environment with no Ray address/auth variables.

The head's `RAY_AUTH_MODE=token` and random `RAY_AUTH_TOKEN` live only in its own environment; clients must send
the token deliberately. Nothing here changes this process's os.environ or ~/.ray except through monkeypatch.
"""

from __future__ import annotations


import pytest

from rayhead import CLIENT_ENV_VARS, discard, start_head


@pytest.fixture(scope="module")
def ray_head():
    head = start_head()
    try:
        yield head
    finally:
        discard(head, "the test cluster")


@pytest.fixture
def clean_client_env(monkeypatch, tmp_path):
    """No Ray address/auth variables and an empty HOME (no ~/.ray/auth_token) for the code under test;
    monkeypatch restores everything afterwards."""
    for name in CLIENT_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path
