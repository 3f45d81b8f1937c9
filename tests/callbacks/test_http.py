"""The HTTP edge itself (callbacks/http.py) against real receivers on 127.0.0.1 (issue 15 §4, §6).

One deadline for the whole try, whatever the server drips; the address policy applied to the
addresses a name resolves to, at connect time, and the connection made to a checked address.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any

import pytest

from callbacks import http
from streams.core.validation import EgressPolicy, parse_networks
from tests.callbacks.receiver import Drip, Receiver

FORBID = EgressPolicy(forbid_private_callbacks=True)
LOOPBACK_ALLOWED = EgressPolicy(forbid_private_callbacks=True, allowed_networks=tuple(parse_networks(["127.0.0.0/8"])))


def post(url: str, *, timeout: float = 5.0, policy: EgressPolicy | None = None) -> http.HttpResult:
    prepared = http.prepare(method="POST", url=url, params={"Event": "StartStream"})
    return http.send(prepared, timeout=timeout, excerpt_limit=512, policy=policy)


def test_a_dripping_server_cannot_hold_a_try_past_its_deadline(receiver: Receiver) -> None:
    """Before: every byte came within the 1 s read timeout, so the try lasted as long as the drip (~12 s)."""
    url = receiver.url("/drip", "token", Drip(0.3))
    began = time.monotonic()
    result = post(url, timeout=1.0)
    took = time.monotonic() - began
    assert result.status_code is None and result.error == "timeout after 1 s"
    assert took < 2.5, took
    assert len(receiver.hits_for("/drip")) == 1


def test_a_try_after_a_deadline_gets_a_fresh_connection(receiver: Receiver) -> None:
    drip = receiver.url("/drip", "token", Drip(0.3))
    fine = receiver.url("/fine", "token")
    assert post(drip, timeout=0.5).error == "timeout after 0.5 s"
    result = post(fine)
    assert result.status_code == 200 and result.body_excerpt == "ok"


def test_a_slow_connect_counts_against_the_same_deadline() -> None:
    # a listening socket whose backlog is full: the SYN is never answered
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            began = time.monotonic()
            result = post(f"http://127.0.0.1:{port}/", timeout=1.0)
            took = time.monotonic() - began
        finally:
            for filler in fillers:
                filler.close()
    assert result.status_code is None
    assert took < 2.5, took


@pytest.mark.parametrize(
    "host",
    [
        "localhost",  # a name
        "127.1",  # short dotted form
        "2130706433",  # one decimal number
        "0x7f000001",  # hex
        "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    ],
)
def test_names_and_spellings_that_reach_loopback_are_refused_at_connect_time(receiver: Receiver, host: str) -> None:
    """Before: only literal IPs were refused, and only when the URL was validated."""
    url = receiver.url("/private", "token").replace("127.0.0.1", host)
    result = post(url, policy=FORBID)
    assert result.permanent and result.status_code is None
    assert result.error.startswith(f"refused: {host.strip('[]')} resolves to a private or loopback address (")
    assert receiver.hits_for("/private") == []


def test_the_allow_list_opens_a_private_network(receiver: Receiver) -> None:
    url = receiver.url("/allowed", "token").replace("127.0.0.1", "localhost")
    assert post(url, policy=LOOPBACK_ALLOWED).status_code == 200
    assert post(url, policy=EgressPolicy()).status_code == 200  # the default policy forbids nothing


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the first answer passes the check, a second one would point elsewhere."""
    allowed_one = EgressPolicy(forbid_private_callbacks=True, allowed_networks=tuple(parse_networks(["127.0.0.1"])))
    answers = ["127.0.0.1", "127.0.0.2"]
    lookups: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = answers[min(len(lookups), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = receiver.url("/rebind", "token").replace("127.0.0.1", "rebind.test")
    result = post(url, policy=allowed_one)
    assert result.status_code == 200
    assert lookups == ["rebind.test"]  # resolved once; the socket went to that address
    [hit] = receiver.hits_for("/rebind")
    assert hit.headers["Host"] == f"rebind.test:{receiver.port}"  # the name is still the Host


def test_the_policy_checks_every_address_and_names_what_it_refused() -> None:
    policy = EgressPolicy(forbid_private_callbacks=True, allowed_networks=tuple(parse_networks(["10.1.0.0/16"])))
    assert policy.refusal("a.test", ["93.184.216.34"]) is None
    assert policy.refusal("a.test", ["10.1.2.3"]) is None
    assert policy.refusal("a.test", ["93.184.216.34", "10.2.0.1"]) == (
        "a.test resolves to a private or loopback address (10.2.0.1), which this hub forbids"
    )
    for address in ("100.64.0.1", "169.254.169.254", "0.0.0.0", "::", "fe80::1", "224.0.0.1", "::ffff:10.0.0.1"):
        assert policy.forbids(address), address
    assert ipaddress.ip_address("8.8.8.8").is_global and not policy.forbids("8.8.8.8")
