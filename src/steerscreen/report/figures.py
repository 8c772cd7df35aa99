"""The report's figures: each a function from tables to PNG bytes (matplotlib, Agg canvas).

Figures are drawn on a bare :class:`~matplotlib.figure.Figure` with an Agg canvas, never through
pyplot, so no global state or display is involved. Labels that come from data (run names, set
names) have ``$`` escaped, since matplotlib would read it as mathtext.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from steerscreen.report.headline import LABELS, OUTCOMES, SIDE_OUTCOMES, Interval

FEATURE = "#3b6ea8"
RANDOM = "#d9822b"
BASELINE = "#9aa0a8"
GROUP = "#5b8fc7"
MINUS = "#e3a857"
FULL = "#1f3b63"
DPI = 110
STYLE = {"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.color": "#e6e8ec",
         "grid.linewidth": 0.7, "axes.axisbelow": True, "legend.frameon": False,
         "legend.fontsize": 8.5, "xtick.labelsize": 8.5, "ytick.labelsize": 8.5}
BASELINE_SETS = ("freq", "mag", "freq+mag", "direct", "pass", "baselines")


def _t(s: object) -> str:
    return str(s).replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # The constrained layout already fits everything: no bbox_inches="tight" (a second draw).
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho with average ranks for ties (scipy.stats costs a second to import)."""
    rx = pl.Series(x).rank().to_numpy()
    ry = pl.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def _grid(n: int, row_height: float, pad: float, ncol: int = 3) -> tuple[Figure, np.ndarray]:
    """A 10-inch-wide figure with ``n`` panels in rows of ``ncol``; unused panels hidden."""
    nrow = math.ceil(n / ncol)
    fig = _new(10, row_height * nrow + pad)
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _new(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


def _finite(*xs: np.ndarray) -> np.ndarray:
    ok = np.ones(len(xs[0]), dtype=bool)
    for x in xs:
        ok &= np.isfinite(x)
    return ok


def _interval(ax: Axes, y: float, iv: tuple[float, float, float],
              horizontal: bool = True) -> None:
    """A point estimate with its CI as a line (robust to a CI that excludes the estimate)."""
    _, lo, hi = iv
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return
    if horizontal:
        ax.plot([lo, hi], [y, y], color="#222", lw=1.2, solid_capstyle="butt", zorder=3)
        ax.plot([lo, lo, math.nan, hi, hi], [y - .15, y + .15, math.nan, y - .15, y + .15],
                color="#222", lw=1, zorder=3)
    else:
        ax.plot([y, y], [lo, hi], color="#222", lw=1.2, zorder=3)
        ax.plot([y - .12, y + .12, math.nan, y - .12, y + .12], [lo, lo, math.nan, hi, hi],
                color="#222", lw=1, zorder=3)


def scatter(pred: pl.DataFrame, context_set: str,
            rhos: Mapping[str, Interval | None]) -> bytes:
    """Out-of-fold prediction (x) vs measured outcome (y), one panel per outcome."""
    with rc_context(STYLE):
        fig = _new(10, 3.3)
        axes = fig.subplots(1, len(OUTCOMES))
        for ax, outcome in zip(axes, OUTCOMES, strict=True):
            x = pred[f"pred_{outcome}"].to_numpy().astype(float)
            y = pred[f"{outcome}@{context_set}"].to_numpy().astype(float)
            ok = _finite(x, y)
            ax.scatter(x[ok], y[ok], s=11, alpha=.55, color=FEATURE, linewidths=0)
            iv = rhos.get(outcome)
            if iv is None and ok.sum() > 2:
                iv = Interval(_spearman(x[ok], y[ok]), math.nan, math.nan)
            title = LABELS[outcome]
            if iv is not None:
                title += f"\nSpearman ρ = {iv.value:.3g}"
                if math.isfinite(iv.lo):
                    title += f" [{iv.lo:.2g}, {iv.hi:.2g}]"
            ax.set_title(title)
            ax.set_xlabel("predicted (out of fold)")
            ax.set_ylabel(f"measured ({_t(context_set)} contexts)")
        return _png(fig)


def _set_kind(name: str) -> str:
    if name in ("full", "full+lin"):
        return "full"
    if name in BASELINE_SETS:
        return "baseline"
    return "minus" if name.startswith(("full-", "full+lin-")) else "group"


def ablation(cv: pl.DataFrame, context_set: str) -> bytes:
    """Ridge CV rho with 95% CI per predictor set: baselines, groups alone, full minus each."""
    rows = cv.filter((pl.col("model") == "ridge") & (pl.col("context_set") == context_set))
    order = {"baseline": 0, "group": 1, "minus": 2, "full": 3}
    sets = sorted(set(rows["set"].to_list()),
                  key=lambda s: (order[_set_kind(s)], BASELINE_SETS.index(s)
                                 if s in BASELINE_SETS else 0, s))
    colors = {"baseline": BASELINE, "group": GROUP, "minus": MINUS, "full": FULL}
    with rc_context(STYLE):
        fig = _new(10, 0.26 * len(sets) + 1.3)
        axes = fig.subplots(1, len(OUTCOMES), sharey=True)
        for ax, outcome in zip(axes, OUTCOMES, strict=True):
            part = {r["set"]: r for r in rows.filter(pl.col("outcome") == outcome)
                    .iter_rows(named=True)}
            for i, s in enumerate(sets):
                r = part.get(s)
                if r is None:
                    continue
                ax.barh(i, r["rho"], color=colors[_set_kind(s)], height=.7)
                _interval(ax, i, (r["rho"], r["rho_lo"], r["rho_hi"]))
            if "full" in part:
                ax.axvline(part["full"]["rho"], color=FULL, lw=.8, ls="--")
            ax.axvline(0, color="#444", lw=.8)
            ax.set_title(LABELS[outcome])
            ax.set_xlabel("Spearman ρ (CV, 95% CI)")
        axes[0].set_yticks(range(len(sets)), [_t(s) for s in sets])
        axes[0].invert_yaxis()
        axes[0].grid(axis="y", visible=False)
        return _png(fig)


def payoff(heldout: pl.DataFrame) -> bytes:
    """Held-out payoff of the selected top share, per outcome, with 95% CIs."""
    outcomes = [o for o in (*OUTCOMES, *SIDE_OUTCOMES)
                if o in set(heldout["outcome"].to_list())]
    bars = (("full\n− random", "full", "payoff_vs_random", "vs_random_lo", "vs_random_hi", FULL),
            ("freq+mag\n− random", "baseline (freq+mag)", "payoff_vs_random", "vs_random_lo",
             "vs_random_hi", BASELINE),
            ("full\n− freq+mag", "full", "payoff_vs_baseline", "vs_baseline_lo",
             "vs_baseline_hi", GROUP))
    with rc_context(STYLE):
        fig, axes = _grid(len(outcomes), 2.5, .3)
        for ax, outcome in zip(axes, outcomes, strict=False):
            sel = {r["selector"]: r for r in heldout.filter(pl.col("outcome") == outcome)
                   .iter_rows(named=True)}
            for i, (_label, selector, v, lo, hi, color) in enumerate(bars):
                r = sel.get(selector)
                if r is None or r.get(v) is None:
                    continue
                ax.bar(i, r[v], color=color, width=.65)
                _interval(ax, i, (r[v], _nan(r.get(lo)), _nan(r.get(hi))),
                          horizontal=False)
            ax.axhline(0, color="#444", lw=.8)
            ax.set_xticks(range(len(bars)), [b[0] for b in bars])
            ax.set_title(LABELS.get(outcome, outcome))
            ax.grid(axis="x", visible=False)
        return _png(fig)


def _nan(x: object) -> float:
    return math.nan if x is None else float(x)  # type: ignore[arg-type]


DIST_COLUMNS = ("effect_stability", "collateral_spread", "collateral_out", "effect_kl",
                "target_gain", "n_recruited")


def distributions(rows: pl.DataFrame, context_set: str) -> bytes:
    """Outcome histograms: steered features vs the random-direction null (one context set)."""
    rows = rows.filter(pl.col("context_set") == context_set)
    cols = [c for c in DIST_COLUMNS if c in rows.columns]
    feat = rows.filter(pl.col("direction") == "feature")
    rand = rows.filter(pl.col("direction") == "random")
    with rc_context(STYLE):
        fig, axes = _grid(len(cols), 2.4, .4)
        for ax, col in zip(axes, cols, strict=False):
            f = feat[col].to_numpy().astype(float)
            r = rand[col].to_numpy().astype(float)
            f, r = f[np.isfinite(f)], r[np.isfinite(r)]
            both = np.concatenate([f, r])
            if both.size == 0:
                ax.set_title(f"{LABELS.get(col, col)}: no finite values")
                continue
            lo, hi = float(both.min()), float(both.max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
            if f.size:
                ax.hist(f, bins=bins, density=True, color=FEATURE, alpha=.55,
                        label=f"features (n = {f.size})")
                ax.axvline(np.median(f), color=FEATURE, lw=1.2, ls="--")
            if r.size:
                ax.hist(r, bins=bins, density=True, histtype="step", color=RANDOM, lw=1.6,
                        label=f"random directions (n = {r.size})")
                ax.plot(r, np.zeros_like(r), "|", color=RANDOM, ms=9, mew=1.2,
                        transform=ax.get_xaxis_transform())
                ax.axvline(np.median(r), color=RANDOM, lw=1.2, ls="--")
            ax.set_title(LABELS.get(col, col))
            ax.set_yticks([])
            ax.grid(axis="y", visible=False)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2)
        return _png(fig)


def comparison(per_run: pl.DataFrame, labels: Sequence[str]) -> bytes:
    """Per run: primary-endpoint rho of full and freq+mag, and delta rho with its 95% CI."""
    n = per_run.height
    with rc_context(STYLE):
        fig = _new(10, 0.42 * n + 1.3)
        a, b = fig.subplots(1, 2, sharey=True)
        y = np.arange(n)
        full = per_run["rho_full"].to_numpy().astype(float)
        base = per_run["rho_freq_mag"].to_numpy().astype(float)
        a.scatter(full, y, color=FULL, label="full", zorder=3)
        a.scatter(base, y, facecolors="white", edgecolors=BASELINE, lw=1.5, label="freq+mag",
                  zorder=3)
        for i in range(n):
            a.plot([base[i], full[i]], [i, i], color="#bbb", lw=1, zorder=2)
        a.axvline(0, color="#444", lw=.8)
        a.set_xlabel("Spearman ρ, cleanliness (CV)")
        a.set_title("primary endpoint: both sets")
        fig.legend(*a.get_legend_handles_labels(), loc="outside lower left", ncol=2)
        for i, r in enumerate(per_run.iter_rows(named=True)):
            d = (_nan(r["delta_rho"]), _nan(r["delta_lo"]), _nan(r["delta_hi"]))
            ok = math.isfinite(d[1]) and d[1] > 0
            b.scatter([d[0]], [i], color=FULL if ok else GROUP, zorder=4)
            _interval(b, i, d)
        b.axvline(0, color="#444", lw=.8)
        b.set_xlabel("Δρ, full − freq+mag (95% CI)")
        b.set_title("primary endpoint: difference")
        a.set_yticks(y, [_t(s) for s in labels])
        a.invert_yaxis()
        return _png(fig)


def transfer(table: pl.DataFrame, runs: Sequence[str],
             own: Mapping[tuple[str, str], float]) -> bytes:
    """Heatmap per outcome: fit on the row's run, Spearman rho on the column's run.

    The diagonal holds each run's own cross-validated rho (``own``), outlined."""
    k = len(runs)
    idx = {r: i for i, r in enumerate(runs)}
    vals = [abs(v) for v in table["rho"].to_list() if v is not None and math.isfinite(v)]
    vmax = max(0.3, *vals) if vals else 1.0
    side = max(2.6, 0.75 * k + 1.2)
    with rc_context(STYLE):
        fig = _new(min(3 * side + 1, 14), side + .2)
        axes = fig.subplots(1, len(OUTCOMES))
        im = None
        for ax, outcome in zip(axes, OUTCOMES, strict=True):
            m = np.full((k, k), np.nan)
            text: dict[tuple[int, int], str] = {}
            for r in table.filter(pl.col("outcome") == outcome).iter_rows(named=True):
                if r["train"] in idx and r["test"] in idx:
                    i, j = idx[r["train"]], idx[r["test"]]
                    m[i, j] = _nan(r["rho"])
                    text[i, j] = f"{m[i, j]:.2f}\n[{_nan(r['lo']):.2f}, {_nan(r['hi']):.2f}]"
            for run, i in idx.items():
                v = own.get((run, outcome), math.nan)
                m[i, i] = v
                text[i, i] = f"{v:.2f}\n(own CV)" if math.isfinite(v) else "–"
            im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            for (i, j), s in text.items():
                ax.text(j, i, s, ha="center", va="center", fontsize=7.5 if k < 5 else 6.5,
                        color="white" if abs(np.nan_to_num(m[i, j])) > .6 * vmax else "#111")
                if i == j:
                    ax.add_patch(_square(i))
            ax.set_xticks(range(k), [_t(r) for r in runs], rotation=30, ha="right")
            ax.set_yticks(range(k), [_t(r) for r in runs] if ax is axes[0] else [])
            ax.set_title(LABELS[outcome])
            ax.set_xlabel("evaluated on")
            ax.grid(False)
        axes[0].set_ylabel("fit on")
        if im is not None:
            fig.colorbar(im, ax=list(axes), shrink=.8, label="Spearman ρ")
        return _png(fig)


def _square(i: int):
    from matplotlib.patches import Rectangle

    return Rectangle((i - .5, i - .5), 1, 1, fill=False, ec="#333", lw=1.2)
