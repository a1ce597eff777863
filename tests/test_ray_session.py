"""Connecting to Ray: a refused connection says what the user can do about it. (An address nobody answers at is
a bad-input row of tests/test_cli.py: it needs a process not connected to the shared test cluster.)"""

import pytest

from ensembles.ray_connection import _token_hint


@pytest.mark.parametrize("address, auth_mode, hinted", [
    ("10.0.0.1:6379", None, True),       # Ray only says it failed to connect
    ("10.0.0.1:6379", "token", False),   # the user opted in already: the hint would mislead
    ("auto", None, False),               # Ray picks the token up by itself for auto
    (None, None, False),
])
def test_a_refused_explicit_address_hints_at_token_authentication(monkeypatch, address, auth_mode, hinted):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    if auth_mode:
        monkeypatch.setenv("RAY_AUTH_MODE", auth_mode)
    assert ("RAY_AUTH_MODE=token" in _token_hint(address)) is hinted
