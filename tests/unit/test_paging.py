"""Ids and page parameters: every bad value is a 400 with its own problem type."""

from __future__ import annotations

import pytest

from surge.ground.paging import parse_id, parse_page
from surge.ground.web import Problem


def test_pages() -> None:
    assert parse_page("", 50, 200) == (None, 50)
    assert parse_page("cursor=17&limit=3&other=x", 50, 200) == (17, 3)
    assert parse_page("limit=200", 50, 200) == (None, 200)


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("limit=0", "bad-limit"),
        ("limit=201", "bad-limit"),
        ("limit=-1", "bad-limit"),
        ("limit=", "bad-limit"),
        ("limit=" + "9" * 5000, "bad-limit"),  # int() would refuse it: no 500
        ("limit=\u0661", "bad-limit"),  # a non-ASCII digit
        ("cursor=0", "bad-cursor-id"),
        ("cursor=abc", "bad-cursor-id"),
        ("cursor=" + "9" * 20, "bad-cursor-id"),
        ("cursor=9223372036854775808", "bad-cursor-id"),
    ],
)
def test_bad_pages(query: str, kind: str) -> None:
    with pytest.raises(Problem) as refused:
        parse_page(query, 50, 200)
    assert (refused.value.status, refused.value.kind) == (400, kind)


def test_ids() -> None:
    assert parse_id("9223372036854775807") == 2**63 - 1
    with pytest.raises(Problem) as refused:
        parse_id("007x", "sale")
    assert refused.value.kind == "bad-sale-id"
