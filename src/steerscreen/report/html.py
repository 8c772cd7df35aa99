"""HTML building blocks for the report: escaping by default, number formatting, the page template.

Every string that reaches the page goes through :func:`esc` unless it is :class:`Safe`, and only
the helpers here create :class:`Safe` values, from escaped parts. So text that comes from data
(example contexts, decoded tokens, run names, paths, specs) can never inject markup. The page is
self-contained: inline CSS, images as ``data:`` URIs, system fonts, no network. Its one script,
the screen table's (:mod:`steerscreen.report.screen`), is an inlined constant that writes data as
text nodes only; its data sits in a JSON block escaped so that no text can end it.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


class Safe(str):
    """A string of HTML that is already escaped (built only from escaped parts)."""

    __slots__ = ()


def esc(x: object) -> Safe:
    """``x`` as HTML text: escaped unless it is already :class:`Safe`."""
    if isinstance(x, Safe):
        return x
    return Safe(html.escape(str(x), quote=True))


def join(parts: Iterable[object], sep: str = "") -> Safe:
    return Safe(esc(sep).join(esc(p) for p in parts))


_VOID = frozenset({"img", "br", "hr", "meta", "input"})


def tag(name: str, *body: object, **attrs: object) -> Safe:
    """``<name attrs>body</name>``; ``class_`` stands for ``class``, None values are dropped."""
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"'
                   for k, v in attrs.items() if v is not None)
    if name in _VOID:
        return Safe(f"<{name}{attr}>")
    return Safe(f"<{name}{attr}>{join(body)}</{name}>")


def code(x: object) -> Safe:
    return tag("code", x)


# --- numbers --------------------------------------------------------------------------------------
def num(x: Any, signed: bool = False) -> str:
    """3 significant digits (thousands as grouped integers); "–" for missing, NaN or None."""
    if x is None:
        return "–"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return f"{int(x):+,}" if signed else f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return ("+" if signed and v > 0 else "") + ("∞" if v > 0 else "−∞")
    if v == 0:
        return "0"
    s = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:#.3g}".rstrip(".")
    if "e" in s:  # 1.23e-05: drop the padding zero of the exponent
        mant, exp = s.split("e")
        s = f"{mant.rstrip('.')}e{int(exp)}"
    s = s.replace("-", "−")
    return f"+{s}" if signed and v > 0 else s


def ci(x: Any, lo: Any, hi: Any, signed: bool = False) -> str:
    """``x [lo, hi]`` with :func:`num`; just ``x`` when the interval is missing."""
    if lo is None or hi is None or _nan(lo) or _nan(hi):
        return num(x, signed)
    return f"{num(x, signed)} [{num(lo, signed)}, {num(hi, signed)}]"


def _nan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


# --- blocks ---------------------------------------------------------------------------------------
def table(header: Sequence[object], rows: Iterable[Sequence[object]], *,
          class_: str | None = None) -> Safe:
    """A table; numbers are formatted with :func:`num` and right-aligned, other cells escaped."""
    head = tag("tr", *[tag("th", h) for h in header])
    body = []
    for row in rows:
        cells = [tag("td", num(c), class_="num") if c is None or is_number(c) else tag("td", c)
                 for c in row]
        body.append(tag("tr", *cells))
    return tag("div", tag("table", tag("thead", head), tag("tbody", *body), class_=class_),
               class_="scroll")


def kv_table(items: Mapping[str, Any]) -> Safe:
    """A flattened mapping (nested keys joined by dots) as a key/value list in two columns."""
    return tag("dl", *[tag("div", tag("dt", k), tag("dd", _value(v)))
                       for k, v in flatten(items)], class_="kv")


def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _value(v: Any) -> str:
    if isinstance(v, list | tuple):
        shown = ", ".join(_value(x) for x in v[:12])
        return f"[{shown}{', …' if len(v) > 12 else ''}]" + (f" ({len(v)} in all)"
                                                             if len(v) > 12 else "")
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.6g}"  # parameters keep their precision
    return str(v)


def figure(png: bytes, *, alt: str, caption: str, how: str) -> Safe:
    """An inline PNG with its caption and a one-line "how to read this"."""
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return tag("figure", tag("img", src=src, alt=alt),
               tag("figcaption", tag("strong", caption), " ",
                   tag("span", "How to read this: ", class_="how"), how))


def missing(what: str, command: str) -> Safe:
    """The placeholder of a section whose inputs are not there yet."""
    return tag("p", tag("strong", "Not available: "), what, ". Produce it with ", code(command),
               ".", class_="missing")


def note(*parts: object) -> Safe:
    return tag("p", *parts, class_="note")


def badge(text: str, good: bool | None) -> Safe:
    kind = "neutral" if good is None else ("good" if good else "bad")
    return tag("span", text, class_=f"badge {kind}")


# --- the page -------------------------------------------------------------------------------------
CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #dfe3ea; --bg: #fff; --soft: #f5f7fa;
        --accent: #2f5d9b; --good: #1f7a45; --bad: #a33a2b; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; }
main { max-width: 62rem; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; }
header.page { border-bottom: 2px solid var(--line); margin-bottom: 1rem; }
h1 { font-size: 1.7rem; margin: .2rem 0 .3rem; }
h2 { font-size: 1.35rem; margin: 2.2rem 0 .6rem; padding-top: .4rem;
     border-top: 1px solid var(--line); }
h3 { font-size: 1.12rem; margin: 1.6rem 0 .5rem; }
h4 { font-size: 1rem; margin: 1rem 0 .4rem; }
p { margin: .4rem 0 .7rem; }
.sub { color: var(--muted); margin: 0 0 .8rem; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
          padding: .5rem 1rem; margin: 1rem 0; font-size: .92rem; }
nav.toc ol { margin: .2rem 0; padding-left: 1.3rem; }
nav.toc ol ol { padding-left: 1.1rem; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono",
       monospace; font-size: .86em; background: var(--soft); padding: .05em .3em;
       border-radius: 3px; }
.scroll { overflow-x: auto; margin: .5rem 0 1rem; }
table { border-collapse: collapse; font-size: .9rem; min-width: 50%; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .6rem; text-align: left;
         vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
dl.kv { column-count: 2; column-gap: 2rem; margin: .4rem 0 1rem; font-size: .84rem; }
dl.kv div { break-inside: avoid; display: flex; gap: .6rem; padding: .12rem 0;
            border-bottom: 1px solid #eef0f3; }
dl.kv dt { font-family: ui-monospace, Menlo, Consolas, "Liberation Mono", monospace;
           color: var(--muted); font-size: .8rem; flex: 0 0 auto; white-space: nowrap; }
dl.kv dd { margin: 0 0 0 auto; text-align: right; word-break: break-all; min-width: 0; }
@media (max-width: 700px) { dl.kv { column-count: 1; } }
details { margin: .2rem 0 1rem; }
summary { cursor: pointer; color: var(--accent); font-size: .9rem; }
figure { margin: 1rem 0 1.4rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
             border-radius: 4px; }
figcaption { font-size: .9rem; color: var(--muted); margin-top: .35rem; }
figcaption strong { color: var(--fg); }
.how { font-style: italic; }
.missing { background: #fff8e6; border-left: 4px solid #e0a400; padding: .5rem .8rem; }
.note { color: var(--muted); font-size: .9rem; }
.warn { background: #fdeeee; border-left: 4px solid var(--bad); padding: .5rem .8rem; }
.headline { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
            padding: .7rem 1rem; margin: .6rem 0 1rem; }
.headline .big { font-size: 1.15rem; font-weight: 600; }
.badge { display: inline-block; padding: 0 .45em; border-radius: 3px; font-size: .82rem;
         font-weight: 600; }
.badge.good { background: #e3f3e9; color: var(--good); }
.badge.bad { background: #f6e6e3; color: var(--bad); }
.badge.neutral { background: #eceff3; color: var(--muted); }
.cards { display: grid; grid-template-columns: 1fr; gap: 1rem; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .7rem 1rem; }
.card h4 { margin: 0 0 .3rem; }
.card .kind { color: var(--muted); font-weight: 400; font-size: .9rem; }
.card table { min-width: 0; font-size: .85rem; }
.card ol { margin: .2rem 0 .5rem; padding-left: 1.4rem; font-size: .88rem; }
.card li { margin: .15rem 0; }
.ctx { font-family: ui-monospace, Menlo, Consolas, "Liberation Mono", monospace;
       font-size: .84rem; white-space: pre-wrap; word-break: break-word; }
.ctx .val { color: var(--muted); margin-right: .4rem; }
.ctx .nl { color: #9aa3b2; }
mark { background: #ffe08a; padding: 0 .1em; border-radius: 2px; }
.tok { display: inline-block; margin: .1rem .25rem .1rem 0; padding: .05rem .35rem;
       border: 1px solid var(--line); border-radius: 3px; background: var(--soft);
       font-size: .84rem; }
.tok code { background: none; padding: 0; white-space: pre; }
.tok small { color: var(--muted); margin-left: .25rem; }
table.endpoints { width: 100%; font-size: .85rem; }
table.endpoints td:last-child { width: 34%; }
table.endpoints .verdict { margin: 0 0 .3rem; font-size: .84rem; }
table.endpoints .verdict .power { display: block; color: var(--muted); font-size: .8rem; }
.screen-controls { font-size: .84rem; margin: .4rem 0; }
.screen-bounds { display: flex; flex-wrap: wrap; gap: .3rem .5rem; margin-top: .3rem; }
.screen-controls fieldset { border: 1px solid var(--line); border-radius: 4px; margin: 0;
                            padding: 0 .35rem .3rem; display: flex; gap: .25rem; }
.screen-controls legend { color: var(--muted); font-size: .78rem; padding: 0 .2rem; }
.screen-controls input { font: inherit; }
.screen-controls input[type=number] { width: 3.9rem; }
.screen-controls input[type=search] { width: 14rem; }
.screen-pager { display: flex; gap: .7rem; align-items: center; font-size: .86rem;
                margin: .3rem 0; }
.screen-count { color: var(--muted); }
.screen-table table { font-size: .8rem; width: 100%; }
.screen-table th, .screen-table td { padding: .2rem .35rem; }
.screen-table th { vertical-align: bottom; }
.screen-table th button { all: unset; cursor: pointer; color: var(--accent); }
.screen-table th button:focus-visible { outline: 2px solid var(--accent); }
.screen-table th[aria-sort=ascending] button::after { content: " ▲"; }
.screen-table th[aria-sort=descending] button::after { content: " ▼"; }
.screen-table td.ci { white-space: normal; }
td.screen-token { font-family: ui-monospace, Menlo, Consolas, "Liberation Mono", monospace;
                  white-space: break-spaces; overflow-wrap: anywhere; }
td.screen-drivers { font-size: .74rem; overflow-wrap: anywhere; }
footer { margin-top: 3rem; color: var(--muted); font-size: .85rem;
         border-top: 1px solid var(--line); padding-top: .6rem; }
"""


GENERATOR = '<meta name="generator" content="steerscreen">'
"""In every report page: a report.html without it is not steerscreen's to replace."""


def page(title: str, subtitle: Safe | str, toc: Safe, body: Safe, footer: Safe | str,
         script: str = "") -> str:
    """The whole document; ``title`` and text arguments are escaped here. ``script``: trusted
    JavaScript (a constant of this package, never data), run after the page is parsed."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"{GENERATOR}\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"{tag('header', tag('h1', title), tag('p', subtitle, class_='sub'), class_='page')}"
            f"\n{toc}\n{body}\n{tag('footer', footer)}\n</main>\n"
            + (f"<script>{script}</script>\n" if script else "") + "</body>\n</html>\n")
