"""RFC 3339 times on the command line: one parser for every verb that takes one."""

from __future__ import annotations

import argparse
import datetime as dt


def rfc3339(text: str) -> dt.datetime:
    """An argparse `type`: an aware datetime in UTC, or a usage error naming the problem."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time") from exc
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +00:00)")
    return when.astimezone(dt.UTC)
