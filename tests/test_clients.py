"""Specification of the process's Google clients: anonymous auth reaches loopback only."""

from __future__ import annotations

import pytest

from handlers.core import clients


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080/x", True),
        ("http://127.9.9.9/", True),
        ("http://[::1]:80/", True),
        ("http://localhost:4443", True),
        ("http://127.evil.example/", False),  # a name that merely starts like a loopback address
        ("http://localhost.evil.example/", False),
        ("http://10.0.0.1/", False),
        ("https://dataflow.googleapis.com/v1b3", False),
    ],
)
def test_loopback_is_decided_by_the_address_not_by_a_name_prefix(url, loopback):
    assert clients.is_loopback(url) is loopback


def test_an_anonymous_session_refuses_any_host_that_is_not_loopback_before_sending(monkeypatch):
    monkeypatch.setenv("PIPELINES_ANONYMOUS_AUTH", "true")
    clients.reset()
    try:
        session = clients.google_session()
        with pytest.raises(clients.LoopbackOnly, match=r"dataflow\.googleapis\.com"):
            session.get("https://dataflow.googleapis.com/v1b3/projects/p/locations/l/jobs", timeout=1)
        with pytest.raises(clients.LoopbackOnly):
            session.get("http://127.evil.example/", timeout=1)
    finally:
        clients.reset()
