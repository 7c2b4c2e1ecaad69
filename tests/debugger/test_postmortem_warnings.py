"""Post-mortem debugging that cannot be armed or run says so on every call."""

from __future__ import annotations

import pytest

import amldbg


def test_every_failed_arming_and_post_mortem_call_warns(capfd: pytest.CaptureFixture[str]) -> None:
    # A scoring server may arm or call post_mortem() per request: each failure is one line.
    assert amldbg.enable_post_mortem(port="bad") is False
    assert amldbg.enable_post_mortem(port="bad") is False
    for _ in range(2):
        try:
            raise ValueError("shown")
        except ValueError as error:
            assert amldbg.post_mortem(error, timeout="bad") is False
    captured = capfd.readouterr()
    err = captured.out + captured.err
    assert err.count("post-mortem debugging is off: ValueError: --remote_debug_port") == 2, err
    assert err.count("post-mortem debugging failed: ValueError: --remote_debug_connection_timeout") == 2, err
