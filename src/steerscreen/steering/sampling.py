"""What gets steered, and where: feature samples, random null directions and context sets.

- Features (docs/method.md §4): N alive features stratified by ``base_freq`` decile (seeded), or an
  explicit list (``"3,17,40"``) or file (one id per line, or a CSV/parquet with a ``feature``
  column).
- Null (docs/method.md §2): R random unit directions, seeded, stored as ``feature = -1 - i``.
- Contexts (docs/method.md §2): ``steering`` and ``fresh`` sets come from the steering split, from
  two disjoint halves of its documents (so held-out screening never sees a steering document);
  ``calibration`` contexts from the calibration split. Within each, C windows are drawn at
  random (seeded) from many documents rather than taken from the first one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from steerscreen.corpus import DEFAULT_SPLITS, Contexts, Corpus, make_contexts, split_documents
from steerscreen.errors import CorpusError, SpecError
from steerscreen.files import path_kind, user_path

N_BINS = 10
_FLAGS = {"steering": "--contexts", "fresh": "--fresh-contexts",
          "calibration": "--calibration-contexts"}


def stratified_features(base_freq: np.ndarray, dead: np.ndarray, n: int, seed: int,
                        n_bins: int = N_BINS) -> np.ndarray:
    """``n`` alive features, an equal share from each ``base_freq`` quantile bin (the rest
    spread over the first bins), sampled without replacement -> sorted feature ids."""
    alive = np.flatnonzero(~dead & np.isfinite(base_freq))
    if n > alive.size:
        raise SpecError(f"asked to steer {n} features, but the SAE has only {alive.size} alive "
                        "(ever-firing) features in the stats split",
                        f"pass --features {alive.size} or fewer")
    rng = np.random.default_rng(seed)
    order = alive[np.argsort(base_freq[alive], kind="stable")]
    bins = np.array_split(order, min(n_bins, order.size))
    want = np.full(len(bins), n // len(bins))
    want[: n % len(bins)] += 1
    picked, spare = [], []
    for b, w in zip(bins, want, strict=True):
        perm = rng.permutation(b)
        picked.append(perm[:w])
        spare.append(perm[w:])
    out = np.concatenate(picked)
    short = n - out.size  # a bin smaller than its share: top up from the rest, at random
    if short > 0:
        out = np.concatenate([out, rng.permutation(np.concatenate(spare))[:short]])
    return np.sort(out.astype(np.int64))


def parse_feature_ids(spec: str, n_features: int) -> np.ndarray:
    """Feature ids from ``"3,17,40"`` or a file path -> sorted unique int64 ids (range-checked)."""
    text = spec.strip()
    path = user_path(text)
    kind = path_kind(path)
    if kind == "file":
        ids = _read_id_file(path)
    elif kind != "missing":
        raise SpecError(f"feature list {spec!r} names a {kind}, not a file",
                        "pass a file with one id per line (or a CSV/parquet with a 'feature' "
                        "column), or comma-separated ids such as 3,17,40")
    else:
        try:
            ids = [int(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError as e:
            raise SpecError(f"feature list {spec!r} is neither a file nor comma-separated "
                            "integers", "pass e.g. --feature-ids 3,17,40 or a file with one id "
                            "per line") from e
    if not ids:
        raise SpecError(f"feature list {spec!r} is empty", "give at least one feature id")
    arr = np.unique(np.asarray(ids, dtype=np.int64))
    bad = arr[(arr < 0) | (arr >= n_features)]
    if bad.size:
        raise SpecError(f"feature ids {bad[:8].tolist()} are out of range for an SAE with "
                        f"{n_features} features", f"use ids between 0 and {n_features - 1}")
    return arr


def _read_id_file(path: Path) -> list[int]:
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)["feature"].to_list()
        if path.suffix == ".csv":
            return pl.read_csv(path)["feature"].to_list()
        return [int(line.split("#")[0]) for line in path.read_text(encoding="utf-8").splitlines()
                if line.split("#")[0].strip()]
    except (ValueError, KeyError, UnicodeDecodeError, pl.exceptions.PolarsError) as e:
        raise SpecError(f"cannot read feature ids from {str(path)!r} ({e})",
                        "give one integer per line, or a CSV/parquet with a 'feature' "
                        "column") from e


def random_directions(n: int, d: int, seed: int) -> torch.Tensor:
    """``n`` seeded random unit directions in R^d (float32, CPU) -> [n, d]."""
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).float()


def _pick(docs: list[str], tokenize, bos_id: int, context_len: int, n: int, seed: int,
          label: str) -> Contexts:
    """``n`` windows drawn at random (seeded) from the windows of ``docs``."""
    pool = make_contexts(docs, tokenize, bos_id, context_len,
                         n_tokens=max(50 * n, 2000) * context_len)
    if len(pool) < n:
        raise CorpusError(f"only {len(pool)} contexts of {context_len} tokens fit in "
                          f"{len(docs)} documents, but {n} were requested", "")
    idx = np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False))
    return Contexts(pool.token_ids[idx], pool.doc_ids[idx], pool.starts[idx])


def context_sets(corpus: Corpus, tokenize, bos_id: int, *, context_len: int, n_steering: int,
                 n_fresh: int, n_calibration: int, seed: int) -> dict[str, Contexts]:
    """The ``steering``, ``fresh`` and (when ``n_calibration > 0``) ``calibration`` sets.

    Document ids in the returned contexts index ``corpus.documents``.
    """
    splits = split_documents(len(corpus.documents), DEFAULT_SPLITS, seed)
    steer_docs = splits["steering"]
    if steer_docs.size < 2:
        raise CorpusError(f"the steering split of {corpus.spec!r} has {steer_docs.size} "
                          "document(s); the steering and fresh sets need disjoint documents",
                          "use a corpus with more documents")
    halves = {"steering": steer_docs[0::2], "fresh": steer_docs[1::2],
              "calibration": splits["calibration"]}
    wanted = {"steering": n_steering, "fresh": n_fresh, "calibration": n_calibration}
    out: dict[str, Contexts] = {}
    for i, (name, n) in enumerate(wanted.items()):
        if n <= 0:
            continue
        doc_idx = halves[name]
        try:
            ctx = _pick([corpus.documents[j] for j in doc_idx], tokenize, bos_id, context_len,
                        n, seed + 1 + i, name)
        except CorpusError as e:
            raise CorpusError(f"the {name} contexts: {e.what}",
                              f"lower {_FLAGS[name]} or --context-len, or use a larger "
                              "corpus") from e
        out[name] = Contexts(ctx.token_ids, doc_idx[ctx.doc_ids], ctx.starts)
    return out
