"""The /auth session cookie (kbs.server.sessions): what the broker sealed opens, anything else does not."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kbs.server.sessions import (
    ISSUED_ENTRY_COST,
    MAX_COOKIE_CHARS,
    SESSION_OVERHEAD,
    USED_ENTRY_COST,
    Attested,
    AttestedSessions,
    SessionCookies,
    session_id_of,
)

NOW = dt.datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=dt.UTC)
COOKIES = SessionCookies(b"k" * 32, dt.timedelta(minutes=5))


def test_a_sealed_session_opens_to_itself() -> None:
    session = COOKIES.new_session("snp", NOW)
    assert session.created_at == NOW.replace(microsecond=0)
    # Whole seconds in the cookie: never less than the lifetime from `now`, at most a second more.
    assert NOW + COOKIES.lifetime <= session.expires_at < NOW + COOKIES.lifetime + dt.timedelta(seconds=1)
    on_the_second = COOKIES.new_session("snp", NOW.replace(microsecond=0))
    assert on_the_second.expires_at == NOW.replace(microsecond=0) + COOKIES.lifetime
    elsewhere = SessionCookies(b"k" * 32, dt.timedelta(minutes=5))  # another worker: opens it by its MAC
    assert elsewhere.open(COOKIES.seal(session)) == session == COOKIES.open(COOKIES.seal(session))
    assert session_id_of(COOKIES.seal(session)) == session.session_id
    other = COOKIES.new_session("snp", NOW)
    assert (other.session_id, other.nonce) != (session.session_id, session.nonce)  # fresh id and nonce each time


@pytest.mark.parametrize("part", range(6))
def test_any_edited_part_is_refused(part: int) -> None:
    """Change one field (version, id, TEE, created, expires, nonce) and keep the MAC: refused."""
    value = COOKIES.seal(COOKIES.new_session("snp", NOW))
    pieces = value.split(".")
    edited = pieces[part]
    if part == 0:
        edited = "v2"
    elif part == 2:
        edited = "tdx"
    else:
        edited = edited[:-1] + ("0" if edited[-1] != "0" else "1")
    forged = ".".join([*pieces[:part], edited, *pieces[part + 1:]])
    assert forged != value and COOKIES.open(forged) is None


def test_a_cookie_sealed_here_opens_without_a_second_mac_and_only_that_exact_string(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker that sealed a cookie (at /auth) remembers it for the guest's /attest: that exact string opens to
    its session without the MAC computed again; any other string, an edited copy included, is checked as ever;
    what is remembered is bounded by bytes."""
    cookies = SessionCookies(b"k" * 32, dt.timedelta(minutes=5), issued_bytes=3 * ISSUED_ENTRY_COST)
    sessions = [cookies.new_session("snp", NOW) for _ in range(4)]
    values = [cookies.seal(s) for s in sessions]

    def no_mac(body: str) -> str:
        raise AssertionError("the MAC was computed")
    monkeypatch.setattr(cookies, "_mac", no_mac)
    assert [cookies.open(v) for v in values[1:]] == sessions[1:]  # the last three, remembered
    with pytest.raises(AssertionError, match="MAC was computed"):
        cookies.open(values[0])  # the oldest fell out: opened by its MAC
    edited = values[3][:-1] + ("A" if values[3][-1] != "A" else "B")
    with pytest.raises(AssertionError, match="MAC was computed"):
        cookies.open(edited)
    monkeypatch.undo()
    assert cookies.open(edited) is None and cookies.open(values[0]) == sessions[0]
    nothing = SessionCookies(b"k" * 32, dt.timedelta(minutes=5), issued_bytes=0)
    assert nothing.open(nothing.seal(sessions[0])) == sessions[0]  # remembers nothing, still opens


def test_a_cookie_made_with_another_key_is_refused() -> None:
    mine = SessionCookies(b"m" * 32, dt.timedelta(minutes=5))
    value = mine.seal(mine.new_session("snp", NOW))
    assert mine.open(value) is not None and COOKIES.open(value) is None


def test_oversized_and_malformed_values_are_refused_without_decoding() -> None:
    good = COOKIES.seal(COOKIES.new_session("snp", NOW))
    for value in ["", "a" * 32, good + "x", good.replace(".", ",", 1), "v1." + "x" * 4000, good[:-1] + "=",
                  good + "." * (MAX_COOKIE_CHARS - len(good) + 1)]:
        assert COOKIES.open(value) is None, value
    assert session_id_of(None) is None and session_id_of("c" * 8000) is None


@given(st.text(max_size=300))
def test_no_string_opens_or_crashes(value: str) -> None:
    assert COOKIES.open(value) is None


def test_a_tee_name_no_cookie_could_carry_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="cannot be carried"):
        COOKIES.new_session("SNP.v2", NOW)


def test_attested_sessions_are_bounded_by_their_tokens_bytes() -> None:
    """Each remembered session is found by the cookie that carried it and charged its token, its identity, the
    longest cookie and a fixed overhead; the least recently used go first, and one too big for the whole budget
    is not kept."""
    token_chars, identity = 5000, '[{"submod":"cpu0"}]'
    per_entry = token_chars + len(identity) + MAX_COOKIE_CHARS + SESSION_OVERHEAD
    remembered = AttestedSessions(3 * per_entry)
    sessions = [dataclasses.replace(COOKIES.new_session("snp", NOW), state="attested", token="t" * token_chars)
                for _ in range(5)]
    cookies = [COOKIES.seal(session) for session in sessions]
    entries = [Attested(session, identity, "thumbprint") for session in sessions]
    for cookie, entry in zip(cookies, entries, strict=True):
        remembered.remember(cookie, entry)
    assert [remembered.get(c) for c in cookies] == [None, None, *entries[2:]]
    assert remembered.get(sessions[4].session_id) is None  # the cookie, not the session id, finds it
    assert remembered.bytes_used == 3 * per_entry
    huge = Attested(dataclasses.replace(sessions[0], token="t" * 3 * per_entry), identity, "thumbprint")
    remembered.remember(cookies[0], huge)
    assert remembered.get(cookies[0]) is None and remembered.bytes_used == 3 * per_entry
    assert AttestedSessions(0).get(cookies[0]) is None


def test_sessions_found_used_are_remembered_by_id_and_bounded() -> None:
    """A session whose nonce this worker found used is remembered by its id (any cookie carrying it), in a budget
    of USED_ENTRY_COST bytes a session: the oldest go first."""
    remembered = AttestedSessions(1 << 16, used_bytes=3 * USED_ENTRY_COST)
    ids = [COOKIES.new_session("snp", NOW).session_id for _ in range(5)]
    assert not any(remembered.used(i) for i in ids)
    for session_id in ids:
        remembered.mark_used(session_id)
    assert [remembered.used(i) for i in ids] == [False, False, True, True, True]
    assert remembered.get(ids[4]) is None  # the used ids are not attested sessions by cookie
