"""Per-client limits: who a client is, token buckets, and the connection caps' bookkeeping."""

from __future__ import annotations

import pytest

from kbs.server.limits import ConnectionLimiter, RateLimiter, client_key


@pytest.mark.parametrize(("peer", "key"), [
    (("203.0.113.7", 51000), "203.0.113.7"),
    (("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 443, 0, 0), "2001:db8:1:2::/64"),  # one host holds a /64
    (("::ffff:198.51.100.9", 1, 0, 0), "198.51.100.9"),  # IPv4-mapped is the IPv4 client
    (None, "None"), ("/run/kbs.sock", "/run/kbs.sock"),
])
def test_client_key(peer: object, key: str) -> None:
    assert client_key(peer) == key


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("a") == pytest.approx(0.5)  # empty: the next token in half a second
    assert limiter.allow("b") == 0.0  # another client has its own bucket
    now[0] += 0.5
    assert limiter.allow("a") == 0.0 and limiter.allow("a") > 0
    now[0] += 100
    assert [limiter.allow("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refilled to the burst, no more
    assert RateLimiter(rate=0, burst=1).allow("a") == 0.0  # 0 turns the limit off


def test_connection_caps_total_and_per_client() -> None:
    refused: list[str] = []
    limiter = ConnectionLimiter(total=3, per_client=2, on_refused=refused.append)
    assert [limiter.admit("a"), limiter.admit("a"), limiter.admit("a")] == [True, True, False]
    assert limiter.admit("b") and not limiter.admit("c")  # the total is reached
    assert refused == ["per_client", "total"]
    limiter.release("a")
    assert limiter.admit("c") and limiter.open == 3
    for client in ("a", "b", "c"):
        limiter.release(client)
    assert limiter.open == 0 and limiter._by_client == {}
