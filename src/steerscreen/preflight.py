"""Checks a stage runs before it loads anything heavy: a typo fails in a second, not a minute.

Each ``check_*`` reads only what is cheap (the model's config.json or GGUF header, the SAE's
cfg.json, the run's manifest and stats table, free memory, the output folder) and raises the
same error the full load would raise later, so that an SAE of the wrong width, a hook past the
last layer, an unwritable ``--out`` or a request larger than memory never costs a model load,
and never leaves a run folder behind. What cannot be read cheaply (a hub model that is not
cached) is left to the loaders, which check it again anyway.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerscreen.corpus import DEFAULT_SPLITS, Corpus, max_contexts, split_documents
from steerscreen.errors import CorpusError, SpecError, SteerscreenError
from steerscreen.files import user_path
from steerscreen.memory import check_fits
from steerscreen.models.hooks import HookPoint, check_finite
from steerscreen.models.shape import read_model_shape
from steerscreen.saes.io import read_sae_header
from steerscreen.saes.pairing import SAELike, check_layer, validate_pairing

if TYPE_CHECKING:
    from steerscreen.models.hooks import HookedModel
    from steerscreen.saes.training import TrainConfig
    from steerscreen.stats.stage import StatsConfig
    from steerscreen.steering.stage import SteerConfig

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_writable(path: str | Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be created or written, before any work.

    The nearest existing ancestor must be a folder that accepts a file: permissions alone do not
    tell (root ignores them; a read-only mount does not show in them), so a probe file is
    created there and removed at once."""
    path = user_path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "is itself a file" if probe == path else f"lies under the file {str(probe)!r}"
        raise SteerscreenError(f"cannot write to {flag} {str(path)!r}: it {what}",
                               f"choose a folder path for {flag}")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".steerscreen-probe-"):
            pass
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or -1, str(e))
        where = "" if probe == path else f" (its nearest existing folder {str(probe)!r})"
        raise SteerscreenError(f"cannot write to {flag} {str(path)!r}{where}: {reason}",
                               f"choose a {flag} folder you can write to, or fix its "
                               "permissions") from e


def check_stats(cfg: StatsConfig, out: str | Path, *, model: HookedModel | None = None,
                sae: SAELike | None = None) -> HookPoint | None:
    """Before a stats stage loads anything: output folder, SAE/model/hook pairing from their
    configs, and memory. Returns the hook when it could be resolved."""
    check_writable(out)
    shape = model if model is not None else read_model_shape(cfg.model)
    header = sae if sae is not None else read_sae_header(cfg.sae)
    hp = None
    if shape is not None and header is not None:
        hp = validate_pairing(header, shape, cfg.hook)
    elif shape is not None and cfg.hook is not None:
        hp = check_layer(HookPoint.parse(cfg.hook), shape)
    if shape is not None and header is not None:
        n_ctx = -(-cfg.tokens // (cfg.context_len - 1))
        acc = cfg.options().memory_bytes(header_d_sae(header), shape.d_model,
                                         cfg.final_norm_contexts * (cfg.context_len - 1),
                                         n_ctx * (cfg.context_len - 1))
        check_fits("the stats pass", {"accumulators": acc, **_model_bytes(shape, cfg.dtype),
                                      "batch": _forward_bytes(shape, cfg.batch_size,
                                                              cfg.context_len)},
                   cfg.device, "lower --reservoir-size, --max-partners, --n-examples or "
                   "--batch-size, or use a smaller SAE or model")
    return hp


def check_stats_corpus(cfg: StatsConfig, corpus: Corpus) -> None:
    """Refuse a stats split that cannot hold ``cfg.tokens`` for any tokenizer (no model yet)."""
    splits = split_documents(len(corpus.documents), DEFAULT_SPLITS, cfg.seed)
    docs = [corpus.documents[i] for i in splits["stats"]]
    need = -(-cfg.tokens // (cfg.context_len - 1))
    check_corpus_fits(docs, cfg.context_len, need, f"the stats split ({len(docs)} of "
                      f"{len(corpus.documents)} documents of {corpus.spec!r})",
                      f"--tokens {cfg.tokens}")


def check_corpus_fits(docs: Sequence[str], context_len: int, n_contexts: int, what: str,
                      request: str) -> None:
    """CorpusError when ``docs`` cannot give ``n_contexts`` contexts whatever the tokenizer."""
    most = max_contexts(docs, context_len)
    if most < n_contexts:
        raise CorpusError(
            f"{what} is too small for {request}: it holds at most {most} contexts of "
            f"{context_len} tokens, and {n_contexts} are needed",
            "lower --tokens or --context-len, or use a larger corpus")


def check_first_batch(model: HookedModel, token_ids: Any, hp: HookPoint) -> None:
    """Run the first batch up to the hook and refuse NaN/Inf activations before any file is
    written (the pass checks every later batch itself)."""
    import torch

    ids = torch.as_tensor(token_ids, device=model.device)
    acts = model.forward(ids, read=[hp], logits=False).acts[hp.name]
    check_finite(acts, hp.name, " in the first batch")


def check_steer(cfg: SteerConfig, stats: dict[str, Any], n_features: int, *,
                model: HookedModel | None = None, down: SAELike | None = None) -> None:
    """Before a steer stage loads anything: feature ids against the stats table, the downstream
    SAE against the recorded model and hook, and the steered batch against memory."""
    from steerscreen.steering.engine import cache_bytes, row_bytes
    from steerscreen.steering.sampling import parse_feature_ids

    if cfg.feature_ids is not None:
        parse_feature_ids(cfg.feature_ids, n_features)
    sc = stats["config"]
    shape = model if model is not None else read_model_shape(sc["model"])
    header = down if down is not None else read_sae_header(cfg.downstream_sae)
    if shape is None:
        return
    hp = HookPoint.parse(stats["inputs"]["hook"])
    if header is not None:
        dhp = validate_pairing(header, shape, cfg.downstream_hook)
        if dhp.depth <= hp.depth:
            raise SpecError(f"the downstream hook {dhp.name} does not lie after the steering "
                            f"hook {hp.name}", "pick a downstream SAE at a later layer")
    if cfg.batch_rows is not None:
        g = header_d_sae(header) if header is not None else 0
        t, v, d = cfg.context_len, shape.vocab_size, shape.d_model
        n_ctx = max(cfg.contexts, cfg.fresh_contexts, cfg.calibration_contexts)
        check_fits("the steer stage", {
            "steered batch": cfg.batch_rows * row_bytes(t, v, d, g),
            "clean cache": cache_bytes(n_ctx, t, v, d, g),
            **_model_bytes(shape, sc.get("dtype", "float32"))},
            cfg.device, "lower --batch-rows (or leave it out: it is then sized from free "
            "memory), --context-len or --contexts")


def check_train(configs: Sequence[TrainConfig], out: str | Path | None, *,
                model: HookedModel | None = None) -> None:
    """Before train-sae loads anything: output folder, hooks against the model's layers and the
    activation buffer against memory."""
    if out is not None:
        check_writable(out)
    base = configs[0]
    shape = model if model is not None else read_model_shape(base.model)
    if shape is None:
        return
    hooks = {check_layer(HookPoint.parse(c.hook), shape).name for c in configs}
    per_token = 4 * shape.d_model * len(hooks)
    n_train = base.tokens + base.context_len  # whole contexts are collected
    check_fits("train-sae", {
        "activations": per_token * (n_train + base.heldout_tokens),
        "scaled training copy": 4 * shape.d_model * n_train,
        "SAE weights and optimiser": max(4 * 4 * 2 * c.width * shape.d_model for c in configs),
        **_model_bytes(shape, base.dtype)},
        base.device, "lower --tokens (or train fewer --arch values / hooks per call)")


def check_train_corpus(base: TrainConfig, corpus: Corpus) -> None:
    """Refuse training documents that cannot hold ``--tokens`` for any tokenizer."""
    from steerscreen.saes.training import SPLITS

    split = split_documents(len(corpus.documents), SPLITS, base.seed)["train"]
    docs = [corpus.documents[i] for i in split]
    check_corpus_fits(docs, base.context_len, -(-base.tokens // (base.context_len - 1)),
                      f"the training split ({len(docs)} of {len(corpus.documents)} documents "
                      f"of {corpus.spec!r})", f"--tokens {base.tokens}")


def header_d_sae(sae: Any) -> int:
    return int(getattr(sae, "d_sae", 0) or 0)


def _model_bytes(shape: Any, dtype: str) -> dict[str, int]:
    n = getattr(shape, "n_params", None)
    if not isinstance(n, int):  # a loaded model is already in memory: nothing more to find
        return {}
    return {"model weights": n * _DTYPE_BYTES.get(dtype, 4)}


def _forward_bytes(shape: Any, batch: int, context_len: int) -> int:
    # The residual, a few temporaries and the logits of one batch (float32).
    return 4 * batch * context_len * (8 * shape.d_model + max(shape.vocab_size, 0))


__all__ = ["check_corpus_fits", "check_first_batch", "check_stats", "check_stats_corpus",
           "check_steer", "check_train", "check_train_corpus", "check_writable"]
