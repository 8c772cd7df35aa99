"""Synthetic activations with a spread of frequencies, dead features, repeated tokens and ties."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from steerscreen.stats import StatsAccumulator, StatsOptions


@dataclass
class Data:
    a: np.ndarray  # float32 [B, T, F], position 0 = BOS
    ids: np.ndarray  # int64 [B, T]
    ctx: np.ndarray  # int64 [B]
    scale: np.ndarray  # float32 [B, T]
    resid: np.ndarray  # float32 [B, T, D]
    final: np.ndarray  # float32 [B, T]
    W_enc: np.ndarray  # [D, F]
    W_dec: np.ndarray  # [F, D]


def make_data(B=24, T=13, F=40, D=12, vocab=15, seed=0, dead=(3, 17)) -> Data:
    rng = np.random.default_rng(seed)
    thr = np.linspace(-0.5, 2.4, F)  # firing rates from ~70% down to ~1%
    z = rng.normal(size=(B, T, F)) + 0.3 * rng.normal(size=(B, 1, F))  # bursty by context
    a = np.maximum(z - thr, 0).astype(np.float32) * rng.uniform(0.5, 3, F).astype(np.float32)
    a[:, :, list(dead)] = 0
    ids = rng.integers(2, vocab, size=(B, T))
    ids[:, 0] = 1
    # Two contexts copied exactly (different ids): equal activations, exercising ties.
    a[5], ids[5] = a[4], ids[4]
    ctx = rng.permutation(1000)[:B].astype(np.int64) + 7
    return Data(
        a=a, ids=ids, ctx=ctx,
        scale=rng.uniform(0.5, 2.0, size=(B, T)).astype(np.float32),
        resid=(rng.normal(size=(B, T, D)) * np.linspace(3, 0.2, D) + 0.5).astype(np.float32),
        final=rng.uniform(1, 5, size=(B, T)).astype(np.float32),
        W_enc=rng.normal(size=(D, F)).astype(np.float32),
        W_dec=rng.normal(size=(F, D)).astype(np.float32),
    )


def accumulate(d: Data, opts: StatsOptions, rows=None, batch=5) -> StatsAccumulator:
    rows = np.arange(d.a.shape[0]) if rows is None else np.asarray(rows)
    acc = StatsAccumulator(d.a.shape[2], d.resid.shape[2], opts)
    for i in range(0, len(rows), batch):
        r = rows[i:i + batch]
        acc.update(torch.from_numpy(d.a[r]), torch.from_numpy(d.ids[r]),
                   torch.from_numpy(d.ctx[r]), input_scale_BT=torch.from_numpy(d.scale[r]),
                   resid_BTD=torch.from_numpy(d.resid[r]),
                   final_scale_BT=torch.from_numpy(d.final[r]))
    return acc
