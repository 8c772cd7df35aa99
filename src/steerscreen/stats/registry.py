"""The one registry of per-feature statistic columns (docs/method.md §1): name, group, formula,
units.

``feature_stats.parquet``, the report and the docs all read :data:`COLUMNS`; a column that is not
registered here cannot be written (``steerscreen.stats.table`` checks). Column names are a
contract, so they are spelt exactly as the method (docs/method.md) spells them where it names them.

Notation used in the formulas:

- ``a_f(c, t)``: activation of feature f at context c, position t; only positions ``t >= 1``
  count (position 0 is BOS). ``N``: number of such positions; ``n_f = #{(c, t): a_f > 0}``.
- ``s(c, t)``: the SAE's input-normalisation scale at that position (1 for none; the std of the
  centred input for ``layer_norm``; ``||x|| / sqrt(d_in)`` for ``constant_norm_rescale``), so
  ``a * s * W_dec[f]`` is the feature's write in raw residual units.
- ``v_f = W_dec[f] / ||W_dec[f]||``; ``DL_f = W_U^T (gamma * v_f)`` (``v_f`` mean-centred first
  for LayerNorm models).
- The **reservoir** of f: a uniform sample without replacement of ``R`` (default 200) of its
  firings, chosen by the smallest seeded hash keys (so shards merge exactly). ``n_res =
  min(R, n_f)``. Shape and co-activation statistics are NaN when ``n_res < R``.
- ``ln`` is the natural log; entropies are in nats. Miller–Madow: ``H_MM = -sum_i p_i ln p_i +
  (K - 1) / (2 n)``, ``K`` = distinct values seen, ``n`` = sample size.
- Linear response (``lin_*``): ``u_ct = d logits_ct / d alpha`` at ``alpha = 0`` for ``x' = x +
  alpha v_f`` at every position ``t >= 1`` of the ``linearisation`` contexts (clean forwards and
  their forward-mode derivatives only); ``p`` the clean next-token distribution; ``A_ct v_f =
  sqrt(p) * (u_ct - E_p u_ct)`` and ``d_c = mean_t A_ct v_f`` (the §3 effect vector at first
  order).
- Moments are population moments (``ddof = 0``); skew and excess kurtosis are the biased
  Fisher–Pearson estimators (``scipy.stats.skew`` / ``kurtosis`` with ``bias=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Group = Literal["id", "base", "geom", "act", "coact", "logit", "lin"]
GROUPS: tuple[Group, ...] = ("id", "base", "geom", "act", "coact", "logit", "lin")
LINEAR_GROUP: Group = "lin"
"""The linear-response group (METHOD v2): not part of ``full`` (the pre-registered primary
endpoint's set); screened as ``lin`` alone and ``full+lin``."""


@dataclass(frozen=True)
class Column:
    """One documented column of ``feature_stats.parquet``."""

    name: str
    """Column name (a contract: reports, checks and users rely on it)."""
    group: Group
    """Predictor group; the name's prefix, except ``feature``/``dead`` (``id``/``base``)."""
    formula: str
    """The exact definition, in the notation of this module's docstring."""
    units: str
    """Units or scale (``log10 share``, ``nats``, ``count``, ``cosine``, ``bool``, ...)."""
    description: str
    """What it means, in one sentence."""
    dtype: Literal["int64", "float64", "bool"] = "float64"
    predictor: bool = True
    """False for identifiers, flags and diagnostics that must not enter a predictor set (they
    track frequency and would smuggle the baseline back in)."""


COLUMNS: dict[str, Column] = {}


def register(column: Column) -> Column:
    """Add ``column`` to :data:`COLUMNS` (names are unique; the group must match the prefix)."""
    if column.name in COLUMNS:
        raise ValueError(f"column {column.name!r} is already registered")
    if column.group not in GROUPS:
        raise ValueError(f"column {column.name!r}: unknown group {column.group!r}")
    if column.group not in ("id", "base") and not column.name.startswith(column.group + "_"):
        raise ValueError(f"column {column.name!r} must start with its group {column.group!r}_")
    COLUMNS[column.name] = column
    return column


def columns_in_group(group: str, *, predictors_only: bool = False) -> list[Column]:
    """The registered columns of one group, in registration order."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; groups are {', '.join(GROUPS)}")
    return [c for c in COLUMNS.values()
            if c.group == group and (c.predictor or not predictors_only)]


def predictor_names() -> list[str]:
    """Every column that may enter a predictor set, in registration order."""
    return [c.name for c in COLUMNS.values() if c.predictor]


def _c(name: str, group: Group, formula: str, units: str, description: str, **kw) -> None:
    register(Column(name, group, formula, units, description, **kw))


# --- identifiers and flags ------------------------------------------------------------------
_c("feature", "id", "f", "index", "Feature index in the SAE (0..F-1).", dtype="int64",
   predictor=False)
_c("dead", "base", "n_f == 0", "bool",
   "The feature never fired on the stats split; its undefined statistics are NaN.",
   dtype="bool", predictor=False)

# --- baselines --------------------------------------------------------------------------------
_c("base_freq", "base", "log10(n_f / N)", "log10 share of positions",
   "Firing frequency at positions >= 1 (NaN when dead).")
_c("base_mag", "base", "log10(mean_{a_f > 0}(a_f * s) * ||W_dec[f]||)", "log10 raw residual norm",
   "Typical size of the feature's write when it fires, input normalisation undone (NaN when "
   "dead).")
_c("base_direct", "base", "ln ||DL_f||_2", "ln logit units per unit residual",
   "Size of the trivial direct path from v_f to the logits.")
_c("base_pass", "base", "ln PR(P), P_g = mean_n |a'_g(x'_n + alpha v_f) - a'_g(x'_n)| "
   "||W'_dec[g]||, PR(P) = (sum_g P_g)^2 / sum_g P_g^2",
   "ln count of downstream features",
   "Passthrough breadth: how many features of the downstream SAE S' adding alpha v_f straight "
   "at h' would move, on clean stats-split positions x'_n. It needs S' and the steering dose, so "
   "the steer stage computes it into feature_dose_stats.parquet; it is NaN in "
   "feature_stats.parquet.")

# --- decoder geometry ---------------------------------------------------------------------------
_c("geom_max_cos", "geom", "max_{g != f} cos(W_dec[f], W_dec[g])", "cosine",
   "Signed cosine to the nearest other decoder row.")
_c("geom_top10_cos", "geom", "mean of the 10 largest cos(W_dec[f], W_dec[g]), g != f", "cosine",
   "Mean signed cosine to the 10 nearest other decoder rows (fewer if F <= 10).")
_c("geom_n_neighbours", "geom", "#{g != f: cos(W_dec[f], W_dec[g]) > 0.3}", "count",
   "Number of decoder rows pointing in nearly the same direction (threshold configurable).",
   dtype="int64")
_c("geom_enc_dec_cos", "geom", "cos(W_enc[:, f], W_dec[f])", "cosine",
   "Agreement between what the feature reads and what it writes.")
_c("geom_pc_share", "geom", "||P_k v_f||^2, P_k = projector on the top-k eigenvectors of the "
   "covariance of x (the SAE's input residual before its own normalisation; k = 10)", "share",
   "Share of v_f inside the residual's principal subspace (a random direction gets ~k/D).")
_c("geom_mean_resid_cos", "geom", "cos(v_f, mean_{c, t} x(c, t))", "cosine",
   "Alignment with the mean residual (e.g. with massive dimensions).")

# --- activation statistics (on the reservoir) --------------------------------------------------
_c("act_cv", "act", "std(r) / mean(r), r = the reservoir's activation values", "ratio",
   "Coefficient of variation of the activation when active.")
_c("act_skew", "act", "mean((r - m)^3) / std(r)^3", "unitless", "Skew of the activation.")
_c("act_kurtosis", "act", "mean((r - m)^4) / std(r)^4 - 3", "unitless",
   "Excess kurtosis of the activation.")
_c("act_p50_rel", "act", "quantile(r, 0.5) / mean(r) (linear interpolation)", "ratio",
   "Median activation relative to the mean.")
_c("act_p99_rel", "act", "quantile(r, 0.99) / mean(r) (linear interpolation)", "ratio",
   "99th-percentile activation relative to the mean.")
_c("act_early_share", "act", "#{reservoir firings with 1 <= t <= 3} / n_res", "share",
   "Share of firings at the first three positions after BOS.")
_c("act_token_entropy", "act", "H_MM of the token ids at the reservoir firings", "nats",
   "Miller–Madow entropy of the triggering-token identity.")
_c("act_burstiness", "act",
   "(#{c: any_t a_f(c, t) > 0} / #contexts) / mean_c(1 - (1 - p)^{T_c}), p = n_f / N, "
   "T_c = positions >= 1 in context c (all contexts, not the reservoir)", "ratio",
   "Observed over independent-firing chance of a context having any firing (< 1: clustered).")
_c("act_n_reservoir", "act", "n_res = min(R, n_f)", "count",
   "Firings in the reservoir (diagnostic: tracks frequency below R).", dtype="int64",
   predictor=False)
_c("act_low_count", "act", "n_res < R", "bool",
   "Too few firings for the reservoir statistics, which are NaN.", dtype="bool",
   predictor=False)

# --- co-activation (on the reservoir) ------------------------------------------------------------
_c("coact_n_pmi1", "coact",
   "#{g != f: c_fg > 0 and ln((c_fg / n_co) / (n_g / N)) > 1}, c_fg = firings of f among its "
   "first n_co = min(R_co, n_f) reservoir slots (R_co = R by default) at which g fires too",
   "count",
   "Number of partners that co-fire at least e times more often than chance.", dtype="int64")
_c("coact_max_cond", "coact", "max_{g != f} c_fg / n_co", "probability",
   "Largest conditional firing probability P(g | f) of any partner (0 with no partners).")
_c("coact_partner_entropy", "coact",
   "H_MM of the partner distribution c_fg / sum_g c_fg, n = sum_g c_fg", "nats",
   "Miller–Madow entropy of which features co-fire (NaN with no partners).")
_c("coact_top10_dec_cos", "coact",
   "mean over the 10 partners with the largest c_fg (ties: lower index) of cos(v_f, v_g)",
   "cosine", "Decoder similarity of the most frequent partners (NaN with no partners).")
_c("coact_truncated_share", "coact",
   "share of reservoir firings whose co-active set held more than max_partners features "
   "(only the max_partners largest activations were kept)", "share",
   "Diagnostic: how approximate the co-activation columns are (0 = exact).",
   predictor=False)

# --- direct-logit footprint (scale-free, METHOD v2) -----------------------------------------------
# The v1 dose-dependent logit_entropy / logit_top10_mass are not registered: they are diagnostics
# of feature_dose_stats.parquet only (steerscreen.stats.logits.DOSE_LOGIT_COLUMNS).
_c("logit_pr", "logit", "ln((sum_v z_v^2)^2 / sum_v z_v^4), z = DL_f - mean_v DL_f",
   "ln count of tokens",
   "Participation ratio of the centred direct-logit vector: how many tokens the feature "
   "pushes (scale-free; NaN when DL_f is constant). It equals ln V - ln(logit_kurtosis + 3) "
   "for a vocabulary of V tokens.")
_c("logit_top10_energy", "logit",
   "sum of the 10 largest z_v^2 / sum_v z_v^2, z = DL_f - mean_v DL_f", "share",
   "Share of the centred direct-logit energy in the 10 tokens pushed hardest either way "
   "(scale-free).")
_c("logit_kurtosis", "logit", "mean_v z_v^4 / (mean_v z_v^2)^2 - 3, z = DL_f - mean_v DL_f "
   "(the excess kurtosis of the entries of DL_f over the vocabulary)", "unitless",
   "Heavy-tailedness of the direct-logit vector (scale-free; NaN when DL_f is constant).")
_c("logit_trigger_overlap", "logit",
   "|top10_v(DL_f) ∩ top10 most frequent reservoir token ids| / 10 (ties: lower id)", "share",
   "Whether the feature promotes the tokens that trigger it (NaN when dead).")

# --- linear response (METHOD v2 §1; steerscreen.stats.linear) -----------------------------------
_c("lin_stability", "lin",
   "(||sum_c d_c||^2 - sum_c ||d_c||^2) / ((C - 1) sum_c ||d_c||^2), d_c = mean_t A_ct v_f",
   "share", "effect_stability in the alpha -> 0 limit: the share of first-order effect energy "
   "shared across the linearisation contexts.")
_c("lin_kl", "lin", "ln(1/2 mean_ct Var_p(u_ct)) = ln(1/2 mean_ct ||A_ct v_f||^2)",
   "ln nats per unit alpha^2",
   "Fisher quadratic form: the predicted effect_kl at dose alpha is alpha^2 exp(lin_kl).")
_c("lin_collateral_out", "lin",
   "share of ||m||^2 outside its 20 largest-magnitude entries, m = mean_c d_c", "share",
   "collateral_out in the alpha -> 0 limit (output spread in the Fisher metric).")
_c("lin_target_gain", "lin",
   "mean_ct mean_{v in top10(DL_f)} (u_ct[v] - E_p u_ct)", "logit units per unit alpha",
   "target_gain per unit alpha in the alpha -> 0 limit: how fast steering raises the "
   "feature's own direct-logit tokens.")
_c("lin_pass", "lin",
   "base_pass with alpha v_f replaced by alpha K_n v_f, K_n = d x'_n / d alpha (the clean "
   "Jacobian from h to h' at position n)", "ln count of downstream features",
   "Passthrough breadth of the transported direction. It needs S' and the dose, so the steer "
   "stage computes it into feature_dose_stats.parquet; it is NaN in feature_stats.parquet.")
