"""The screen as a table to explore: every feature of ``RUN/screen.parquet``, ranked, in one
sortable, filterable, searchable table.

Why a script: a dictionary can have 128K features, far past what a static table can show. The
data goes on the page once, as JSON column arrays in ``<script type="application/json">``
(``<``, ``>``, ``&`` and U+2028/2029 escaped, so a corpus token cannot close the script), and
:data:`SCRIPT` (vanilla JS, inlined once per page by :func:`page_script`, no network) renders one
page of rows at a time as DOM text nodes, never as markup. Each table on a page (one per run of a
study) keeps its own state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from steerscreen.report.html import Safe, code, note, num, tag
from steerscreen.report.load import RunData

PAGE_ROWS = 100
"""Rows rendered at a time: the DOM stays small for any dictionary size."""
MARKER = '<div class="screen-table"'
"""Opens every table's markup; data text is escaped, so only :func:`render` can write it."""


@dataclass(frozen=True)
class Column:
    key: str
    """The key of its array in the JSON (and ``data-key`` on the page)."""
    label: str
    kind: str
    """int, num, ci (value with its interval), text or bool: how the script formats it."""
    bounded: bool = False
    """Has min/max filter inputs."""


def columns(target_kl: float | None) -> tuple[Column, ...]:
    kl = f" (s at KL {num(target_kl)})" if target_kl is not None else " (s)"
    return (Column("rank", "rank", "int"), Column("feature", "feature", "int"),
            Column("clean", "cleanliness [interval]", "ci", True),
            Column("width", "interval width", "num", True),
            Column("stab", "stability", "num", True), Column("spread", "spread", "num", True),
            Column("dose", f"dose{kl}", "num", True),
            Column("freq", "firing frequency", "num", True),
            Column("token", "top token", "text"), Column("drivers", "drivers", "text"),
            Column("dead", "dead", "bool"))


# --- the data -------------------------------------------------------------------------------------
def table_data(run: RunData, screen: pl.DataFrame) -> dict[str, Any]:
    """Column arrays (rank order) joined from screen.parquet, feature_stats (base_freq, dead)
    and the rank-1 direct-logit token; a column the files lack is all null."""
    df = screen.sort("rank") if "rank" in screen.columns else screen.with_row_index("rank", 1)
    if run.stats is not None:
        extra = [c for c in ("base_freq", "dead") if c in run.stats.columns
                 and (c == "base_freq" or c not in df.columns)]
        if extra:
            df = df.join(run.stats.select(["feature", *extra]), on="feature", how="left")
    if run.logit_tokens is not None and run.logit_tokens.height:
        top = (run.logit_tokens.sort(["feature", "rank"]).group_by("feature", maintain_order=True)
               .first().select("feature", pl.col("token").alias("top_token")))
        df = df.join(top, on="feature", how="left")

    def col(name: str) -> pl.Series:
        return df[name] if name in df.columns else pl.Series(name, [None] * df.height)

    freq = col("base_freq").cast(pl.Float64).to_numpy()
    return {"rank": col("rank").cast(pl.Int64).to_list(),
            "feature": col("feature").cast(pl.Int64).to_list(),
            "clean": _floats(col("pred_cleanliness")), "clean_lo": _floats(col(
                "pred_cleanliness_lo")), "clean_hi": _floats(col("pred_cleanliness_hi")),
            "stab": _floats(col("pred_effect_stability")),
            "spread": _floats(col("pred_collateral_spread")),
            "dose": _floats(col("pred_strength")),
            "freq": _floats(np.power(10.0, freq)),
            "token": col("top_token").cast(pl.String).to_list(),
            "drivers": col("drivers").cast(pl.String).to_list(),
            "dead": [None if d is None else int(d) for d in col("dead").cast(pl.Boolean)]}


class _Raw(str):
    """JSON text to splice in as is (numbers already formatted)."""


def _floats(x: pl.Series | np.ndarray) -> _Raw:
    """A JSON array of 5 significant digits (enough to sort, a third of the bytes of repr);
    NaN, inf and null as null."""
    a = (x.cast(pl.Float64).to_numpy() if isinstance(x, pl.Series) else x).astype(np.float64)
    return _Raw("[" + ",".join(f"{v:.5g}" if math.isfinite(v) else "null" for v in a) + "]")


_UNSAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
           0x2028: "\\u2028", 0x2029: "\\u2029"}


def script_json(data: dict[str, Any]) -> str:
    """``data`` as JSON that is safe inside ``<script type="application/json">``: the escaped
    characters only occur inside strings, where ``\\uXXXX`` reads back as the same text."""
    return _dumps(data).translate(_UNSAFE)


def _dumps(x: Any) -> str:
    if isinstance(x, _Raw):
        return str(x)
    if isinstance(x, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in x.items()) + "}"
    return json.dumps(x, ensure_ascii=False, allow_nan=False)


# --- the markup -----------------------------------------------------------------------------------
def render(run: RunData, screen: pl.DataFrame) -> Safe:
    """The controls, the (empty) table, the pager and the data of one screen table."""
    kl = screen["target_kl"].drop_nulls() if "target_kl" in screen.columns else None
    cols = columns(float(kl[0]) if kl is not None and kl.len() else None)
    data = {"n": screen.height, "page": PAGE_ROWS, "cols": table_data(run, screen)}
    bounds = [tag("fieldset", tag("legend", c.label.split(" [")[0].split(" (")[0]),
                  *[tag("input", type="number", step="any", data_key=c.key, data_bound=b,
                        placeholder=b, aria_label=f"{b} {c.label}") for b in ("min", "max")])
              for c in cols if c.bounded]
    controls = tag("div", tag("label", "search feature id or top token ",
                              tag("input", type="search", class_="screen-search",
                                  placeholder="e.g. 123 or the")),
                   tag("div", *bounds, class_="screen-bounds"), class_="screen-controls")
    head = tag("tr", *[tag("th", tag("button", c.label, type="button"), data_key=c.key,
                           data_kind=c.kind, aria_sort="none") for c in cols])
    pager = tag("div", tag("button", "← previous", type="button", class_="screen-prev"),
                tag("button", "next →", type="button", class_="screen-next"),
                tag("span", class_="screen-page"), tag("span", class_="screen-count"),
                class_="screen-pager")
    blob = Safe(f'<script type="application/json" class="screen-data">{script_json(data)}'
                "</script>")
    return Safe(f'{MARKER} data-rows="{screen.height}">'
                + controls + pager
                + tag("div", tag("table", tag("thead", head), tag("tbody")), class_="scroll")
                + tag("noscript", "This table needs JavaScript; the same rows are in ",
                      code("screen.csv"), ".")
                + blob + "</div>")


def intro(screen: pl.DataFrame, stats_level: float | None = None) -> Safe:
    dead = int(screen["dead"].sum()) if "dead" in screen.columns else 0
    level = f"{100 * stats_level:g}% " if stats_level is not None else ""
    return note(
        f"All {num(screen.height)} features of the SAE ranked by predicted cleanliness (",
        code("screen.parquet"), ", also as ", code("screen.csv"), f"; {num(dead)} dead "
        "features last), with no steering: the run's fitted predictor applied to every "
        f"feature's statistics. Cleanliness, stability and spread are predictions; the "
        f"interval is the predictor's {level}split-conformal interval; the "
        "predicted dose is the strength s whose predicted KL is the target (– without "
        "lin_kl); firing frequency is 10^base_freq; the top token is the first direct-logit "
        "token; drivers are the predictors that move the cleanliness score most. Click a column "
        "header to sort (again to reverse; missing values last), set min/max bounds to filter, "
        f"or search by feature id or token. {PAGE_ROWS} rows are shown at a time.")


def page_script(body: str) -> str:
    """:data:`SCRIPT` when ``body`` holds a screen table, once however many it holds."""
    return SCRIPT if MARKER in body else ""


def conformal_level(summary: dict[str, Any] | None) -> float | None:
    level = ((summary or {}).get("config") or {}).get("conformal_level")
    return float(level) if isinstance(level, int | float) else None


def _check_script(js: str, forbidden: Sequence[str] = ("</script", "<!--")) -> str:
    assert not any(f in js.lower() for f in forbidden), "the script would end its element"
    return js


SCRIPT = _check_script(r"""
(() => {
  "use strict";
  const isNum = (v) => typeof v === "number" && !Number.isNaN(v);
  const fmt = (v) => {  // 3 significant digits, like the page's numbers
    if (!isNum(v)) return "–";
    if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
    if (v === 0) return "0";
    const a = Math.abs(v);
    const s = a >= 1000 ? Math.round(v).toLocaleString("en-US")
      : a < 1e-4 ? v.toExponential(2) : v.toPrecision(3);
    return s.replace("-", "−");
  };
  function init(root) {
    const data = JSON.parse(root.querySelector("script.screen-data").textContent);
    const c = data.cols, n = data.n, size = data.page;
    c.width = c.clean_lo.map((lo, i) => lo === null || c.clean_hi[i] === null ? null
      : c.clean_hi[i] - lo);
    const tokens = c.token.map((t) => (t || "").toLowerCase());
    const ids = c.feature.map(String);
    const heads = Array.from(root.querySelectorAll("th[data-key]"));
    const body = root.querySelector("tbody");
    const search = root.querySelector("input.screen-search");
    const bounds = Array.from(root.querySelectorAll("input[data-bound]"));
    const prev = root.querySelector(".screen-prev"), next = root.querySelector(".screen-next");
    const count = root.querySelector(".screen-count"), where = root.querySelector(".screen-page");
    let order = Array.from({length: n}, (_, i) => i), shown = order, start = 0;
    let sortKey = "rank", asc = true;

    const cell = (key, kind, i) => {
      const v = c[key][i];
      if (kind === "ci") {
        const lo = c[key + "_lo"][i], hi = c[key + "_hi"][i];
        return lo === null || hi === null ? fmt(v) : `${fmt(v)} [${fmt(lo)}, ${fmt(hi)}]`;
      }
      if (kind === "text") return (v || "").replace(/\n/g, "↵").replace(/\t/g, "⇥");
      if (kind === "bool") return v === null ? "–" : v ? "yes" : "no";
      if (kind === "int") return v === null ? "–" : String(v);
      return fmt(v);
    };
    function sortBy(th) {
      const key = th.dataset.key;
      asc = key === sortKey ? !asc : true;
      sortKey = key;
      const v = c[key], dir = asc ? 1 : -1, byText = th.dataset.kind === "text";
      order = Array.from({length: n}, (_, i) => i).sort((a, b) => {
        let x = v[a], y = v[b];
        if (byText) {  // empty last, then plain code-point order (fast on 128K rows)
          x = x || ""; y = y || "";
          if (!x || !y) return (!x) - (!y) || a - b;
          return (x < y ? -1 : x > y ? 1 : 0) * dir || a - b;
        }
        const mx = !isNum(x), my = !isNum(y);  // null and NaN last in both directions
        if (mx || my) return mx - my || a - b;
        return (x - y) * dir || a - b;
      });
      heads.forEach((h) => h.setAttribute("aria-sort", h === th
        ? (asc ? "ascending" : "descending") : "none"));
      filter();
    }
    function filter() {
      const q = search.value.trim().toLowerCase();
      const lims = bounds.filter((b) => b.value.trim() !== "" && isNum(Number(b.value)))
        .map((b) => [c[b.dataset.key], b.dataset.bound === "min", Number(b.value)]);
      shown = order.filter((i) => {
        for (const [v, isMin, x] of lims) {
          const y = v[i];
          if (!isNum(y) || (isMin ? y < x : y > x)) return false;
        }
        return !q || ids[i].includes(q) || tokens[i].includes(q);
      });
      start = 0;
      draw();
    }
    function draw() {
      const rows = document.createDocumentFragment();
      for (const i of shown.slice(start, start + size)) {
        const tr = document.createElement("tr");
        for (const th of heads) {
          const td = document.createElement("td");
          const kind = th.dataset.kind;
          td.textContent = cell(th.dataset.key, kind, i);  // text, never markup
          td.className = kind === "text" ? `screen-${th.dataset.key}`
            : kind === "ci" ? "num ci" : "num";
          tr.appendChild(td);
        }
        rows.appendChild(tr);
      }
      body.replaceChildren(rows);
      const m = shown.length;
      count.textContent = `showing ${m.toLocaleString("en-US")} of `
        + `${n.toLocaleString("en-US")} features`;
      where.textContent = m ? `rows ${start + 1}–${Math.min(start + size, m)}` : "no rows";
      prev.disabled = start === 0;
      next.disabled = start + size >= m;
    }
    heads.forEach((th) => th.querySelector("button").addEventListener("click", () => sortBy(th)));
    search.addEventListener("input", filter);
    bounds.forEach((b) => b.addEventListener("input", filter));
    prev.addEventListener("click", () => { start = Math.max(0, start - size); draw(); });
    next.addEventListener("click", () => {
      if (start + size < shown.length) { start += size; draw(); }
    });
    heads[0].setAttribute("aria-sort", "ascending");
    draw();
  }
  document.querySelectorAll("div.screen-table").forEach(init);
})();
""")
