"""The report's HTML helpers: escaping by default, number formatting, highlighting."""

from __future__ import annotations

import math

from steerscreen.report.cards import _highlight
from steerscreen.report.html import Safe, ci, esc, kv_table, num, table, tag
from steerscreen.report.study import slugs

HOSTILE = '<script>alert(1)</script>"&<>'


def test_numbers_have_three_significant_digits() -> None:
    assert num(0.17976) == "0.180"
    assert num(-0.0602) == "−0.0602"
    assert num(0.062, signed=True) == "+0.0620"
    assert num(141.38) == "141"
    assert num(35.346) == "35.3"
    assert num(4096) == "4,096" and num(4096.7) == "4,097"
    assert num(7.74e-15) == "7.74e−15"
    assert num(math.nan) == num(None) == "–"
    assert num(0.0) == "0" and num(True) == "yes"
    assert ci(0.18, 0.069, 0.32) == "0.180 [0.0690, 0.320]"
    assert ci(0.18, None, 0.32) == "0.180"


def test_everything_is_escaped_unless_safe() -> None:
    assert esc(HOSTILE) == "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;&lt;&gt;"
    assert esc(Safe("<b>x</b>")) == "<b>x</b>"
    t = tag("td", HOSTILE, title=HOSTILE)
    assert "<script>" not in t and 'title="&lt;script&gt;' in t
    tab = table((HOSTILE,), [(HOSTILE,), (1.5,)])
    assert "<script>" not in tab and '<td class="num">1.50</td>' in tab
    kv = kv_table({"a": {HOSTILE: HOSTILE}})
    assert "<script>" not in kv and "a.&lt;script&gt;" in kv


def test_the_firing_token_is_highlighted_and_escaped() -> None:
    h = _highlight('x <i>\n "&' + " <tok>", " <tok>", [1, 2])
    assert h.endswith("<mark> &lt;tok&gt;</mark>")
    assert '<span class="nl">↵</span>' in h and "&quot;&amp;" in h and "<i>" not in h
    # A window whose text does not end in the token still shows it, marked.
    assert "<mark>&lt;b&gt;</mark>" in _highlight("abc", "<b>", None)
    assert "<mark>7</mark>" in _highlight(None, None, [5, 7])


def test_slugs_are_unique_and_id_safe() -> None:
    assert slugs(["L12 TopK/4096", "l12-topk-4096", '<x>"'] ) == [
        "l12-topk-4096", "l12-topk-4096-2", "x"]
