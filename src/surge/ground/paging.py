"""Ids in paths and cursors, and `?cursor=ID&limit=N` of the paged lists (GET
/users/me/orders, GET /sales: items with ids below ID, newest first, N per page); a bad
id, cursor or limit is a 400."""

from __future__ import annotations

from surge.ground.web import Problem

MAX_ID = 2**63 - 1


def parse_page(query: str, default: int, maximum: int) -> tuple[int | None, int]:
    before, limit = None, default
    for part in query.split("&") if query else ():
        name, _, value = part.partition("=")
        if name == "cursor":
            before = parse_id(value, "cursor")
        elif name == "limit":
            # the length first: int() of thousands of digits is slow, then refused
            if not (0 < len(value) <= 4 and value.isascii() and value.isdigit()):
                raise Problem(400, "bad-limit", f"limit must be 1..{maximum}")
            limit = int(value)
            if not 0 < limit <= maximum:
                raise Problem(400, "bad-limit", f"limit must be 1..{maximum}")
    return before, limit


def parse_id(text: str, what: str = "order") -> int:
    """A positive integer id in canonical ASCII digits; anything else is a 400."""
    if 0 < len(text) <= 19 and text.isascii() and text.isdigit():
        value = int(text)
        if 0 < value <= MAX_ID:
            return value
    raise Problem(400, f"bad-{what}-id", f"{what} id must be a positive integer")
