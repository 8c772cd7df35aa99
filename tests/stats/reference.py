"""Plain-python / numpy re-implementations of METHOD §1, written apart from the library.

Loops over features and firings on dense numpy activations; scipy for moments. Only the
reservoir *selection rule* (the R smallest splitmix64 keys) is shared with the library, and it
is re-implemented here on Python integers.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from scipy import stats as sps

M64 = (1 << 64) - 1


def sm64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def ref_key(ctx: int, pos: int, f: int, seed: int) -> int:
    uid = (ctx << 20) | pos
    salt = sm64(seed & M64)
    return signed(sm64((sm64(uid ^ salt) + f) & M64))


def mm_entropy(items) -> float:
    c = Counter(items)
    n = sum(c.values())
    if n == 0:
        return float("nan")
    h = -sum(k / n * math.log(k / n) for k in c.values())
    return h + (len(c) - 1) / (2 * n)


def reference_columns(a, ids, ctx, scale, W_dec, *, R, R_co, seed, thr=0.3, pmi=1.0):
    """a [B, T, F] (position 0 = BOS, ignored), ids [B, T], ctx [B], scale [B, T]."""
    B, T, F = a.shape
    N = B * (T - 1)
    v = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)
    n_all = np.array([(a[:, 1:, g] > 0).sum() for g in range(F)])
    out: dict[str, list] = {}

    def put(k, x):
        out.setdefault(k, []).append(x)

    for f in range(F):
        fir = [(b, t) for b in range(B) for t in range(1, T) if a[b, t, f] > 0]
        n = len(fir)
        nan = float("nan")
        put("dead", n == 0)
        put("base_freq", math.log10(n / N) if n else nan)
        mean_raw = np.mean([a[b, t, f] * scale[b, t] for b, t in fir]) if n else nan
        put("base_mag", math.log10(mean_raw * np.linalg.norm(W_dec[f])) if n else nan)
        # burstiness
        any_c = sum(any(a[b, t, f] > 0 for t in range(1, T)) for b in range(B))
        p = n / N
        put("act_burstiness", (any_c / B) / (1 - (1 - p) ** (T - 1)) if n else nan)
        # reservoir
        res = sorted(fir, key=lambda bt: ref_key(int(ctx[bt[0]]), bt[1], f, seed))[:R]
        put("act_n_reservoir", len(res))
        put("act_low_count", len(res) < R)
        full = len(res) == R
        x = np.array([a[b, t, f] for b, t in res], dtype=np.float64)
        toks = [int(ids[b, t]) for b, t in res]
        if full:
            m = x.mean()
            put("act_cv", x.std() / m)
            put("act_skew", sps.skew(x))
            put("act_kurtosis", sps.kurtosis(x))
            put("act_p50_rel", np.median(x) / m)
            put("act_p99_rel", np.percentile(x, 99) / m)
            put("act_early_share", np.mean([1 <= t <= 3 for _, t in res]))
            put("act_token_entropy", mm_entropy(toks))
        else:
            for k in ("act_cv", "act_skew", "act_kurtosis", "act_p50_rel", "act_p99_rel",
                      "act_early_share", "act_token_entropy"):
                put(k, nan)
        # co-activation on the first R_co reservoir firings
        co = res[:R_co]
        partners = Counter(g for b, t in co for g in range(F) if g != f and a[b, t, g] > 0)
        if full:
            cond = {g: c / len(co) for g, c in partners.items()}
            put("coact_n_pmi1", sum(math.log(c / (n_all[g] / N)) > pmi for g, c in cond.items()))
            put("coact_max_cond", max(cond.values(), default=0.0))
            put("coact_partner_entropy", mm_entropy(partners.elements()))
            top = sorted(partners, key=lambda g: (-partners[g], g))[:10]
            put("coact_top10_dec_cos",
                float(np.mean([v[f] @ v[g] for g in top])) if top else nan)
        else:
            for k in ("coact_n_pmi1", "coact_max_cond", "coact_partner_entropy",
                      "coact_top10_dec_cos"):
                put(k, nan)
        trig = sorted(Counter(toks).items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        put("_trigger", [t for t, _ in trig])
    return {k: (np.array(vv, dtype=object) if k == "_trigger" else np.array(vv))
            for k, vv in out.items()}


def reference_geometry(W_enc, W_dec, X, k_pc, thr=0.3):
    v = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)
    cos = v @ v.T
    np.fill_diagonal(cos, -np.inf)
    srt = -np.sort(-cos, axis=1)
    e = W_enc.T / np.linalg.norm(W_enc.T, axis=1, keepdims=True)
    cov = np.cov(X.T, bias=True)
    w, U = np.linalg.eigh(cov)
    Uk = U[:, np.argsort(-w)[:k_pc]]
    mu = X.mean(0)
    return {
        "geom_max_cos": srt[:, 0],
        "geom_top10_cos": srt[:, :10].mean(1),
        "geom_n_neighbours": (cos > thr).sum(1),
        "geom_enc_dec_cos": (e * v).sum(1),
        "geom_pc_share": ((v @ Uk) ** 2).sum(1),
        "geom_mean_resid_cos": v @ mu / np.linalg.norm(mu),
    }


def reference_logits(W_dec, W_U, gain, centre, alpha, sigma, triggers):
    v = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)
    out: dict[str, list] = {}
    for f in range(v.shape[0]):
        d = v[f] - v[f].mean() if centre else v[f]
        dl = (d * gain) @ W_U
        z = alpha * dl / sigma
        q = np.exp(z - z.max())
        q /= q.sum()
        top_dl = np.argsort(-dl)[:10]
        out.setdefault("base_direct", []).append(math.log(np.linalg.norm(dl)))
        out.setdefault("logit_entropy", []).append(float(-(q * np.log(q)).sum()))
        out.setdefault("logit_top10_mass", []).append(float(np.sort(q)[-10:].sum()))
        out.setdefault("logit_kurtosis", []).append(float(sps.kurtosis(dl)))
        z2 = (dl - dl.mean()) ** 2
        out.setdefault("logit_pr", []).append(math.log(z2.sum() ** 2 / (z2 ** 2).sum()))
        out.setdefault("logit_top10_energy", []).append(float(np.sort(z2)[-10:].sum() / z2.sum()))
        trig = triggers[f]
        out.setdefault("logit_trigger_overlap", []).append(
            len(set(top_dl.tolist()) & set(trig)) / 10 if trig else float("nan"))
    return {k: np.array(vv) for k, vv in out.items()}
