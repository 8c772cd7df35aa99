"""``train-sae``: train ReLU, JumpReLU and TopK SAEs on one activation pass, cached by config.

Every SAE a call trains reads the same activations (one model pass collects the residual at
every requested hook); the training itself is :func:`steerscreen.saes.training.fit_sae`. A
trained SAE is cached in the user cache keyed by its full config (model, hook, corpus hash,
architecture, every hyperparameter, versions; :func:`cache_key`), so a second identical request
is instant, and is copied to ``out`` when asked.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from steerscreen import __version__
from steerscreen.config import TrainConfig
from steerscreen.corpus import Contexts, Corpus, load_corpus, make_contexts, split_documents
from steerscreen.errors import ArtifactError, SpecError
from steerscreen.files import atomic_dir, cache_dir, sha256_json, write_json
from steerscreen.layout import TRAINING_SUMMARY
from steerscreen.memory import check_fits
from steerscreen.models import HookedModel, HookPoint, ModelSpec, load_model
from steerscreen.models.shape import read_model_shape
from steerscreen.pipeline.checks import check_corpus_fits, check_writable, model_bytes
from steerscreen.pipeline.stage import progress
from steerscreen.saes.io import load_sae, save_sae
from steerscreen.saes.pairing import check_layer
from steerscreen.saes.training import SPLITS, collect_activations, evaluate_sae, fit_sae

SUMMARY = TRAINING_SUMMARY
SHARED = ("model", "corpus", "tokens", "context_len", "heldout_tokens", "seed", "device",
          "dtype")
"""Fields every config trained in one call shares (they define the activation pass)."""


@dataclass
class TrainSummary:
    """The saved record of one training run (``training_summary.json``)."""

    config: dict
    explained_variance: float
    mean_l0: float
    dead_fraction: float
    heldout_tokens: int
    train_tokens: int
    train_seconds: float
    collect_seconds: float
    cache_key: str
    sae_path: str
    cached: bool = False
    versions: dict = field(default_factory=dict)


def cache_key(cfg: TrainConfig, corpus_sha: str) -> str:
    """The cache key of a trained SAE: its config (not device or trust_remote_code, which do
    not change what is trained), the corpus hash and the versions."""
    import sae_lens

    rec = {k: v for k, v in asdict(cfg).items() if k not in ("device", "trust_remote_code")}
    return sha256_json({**rec, "corpus_sha": corpus_sha, "steerscreen": __version__,
                        "sae_lens": sae_lens.__version__})[:20]


def config_variants(archs: list[str], **fields: object) -> list[TrainConfig]:
    """One config per architecture, sharing every other field (per-architecture defaults, such
    as JumpReLU's learning rate, are resolved for each)."""
    return [TrainConfig(arch=a, **fields) for a in archs]  # type: ignore[arg-type]


def check_train(configs: Sequence[TrainConfig], out: str | Path | None, *,
                model: HookedModel | None = None) -> None:
    """Before train-sae loads anything: output folder, hooks against the model's layers and the
    activation buffer against memory."""
    if out is not None:
        check_writable(out)
        for dest in destinations(configs, out):
            check_destination(dest)
    base = configs[0]
    ModelSpec.parse(base.model)
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
        **model_bytes(shape, base.dtype)},
        base.device, "lower --tokens (or train fewer --arch values / hooks per call)")


def check_train_corpus(base: TrainConfig, corpus: Corpus) -> None:
    """Refuse training documents that cannot hold ``--tokens`` for any tokenizer."""
    split = split_documents(len(corpus.documents), SPLITS, base.seed)["train"]
    docs = [corpus.documents[i] for i in split]
    check_corpus_fits(docs, base.context_len, -(-base.tokens // (base.context_len - 1)),
                      f"the training split ({len(docs)} of {len(corpus.documents)} documents "
                      f"of {corpus.spec!r})", f"--tokens {base.tokens}")


def train_saes(configs: list[TrainConfig], out: str | Path | None = None,
               model: HookedModel | None = None, log: Callable[[str], None] = print
               ) -> list[TrainSummary]:
    """Train every config, sharing one activation pass per (model, corpus, tokens, context_len).

    Each SAE lands in the cache (``$STEERSCREEN_CACHE/saes/KEY``) and, when ``out`` is given, in
    ``out`` (one config) or ``out/<arch>-<width>-L<layer>`` (several).
    """
    if not configs:
        return []
    base = configs[0]
    for c in configs[1:]:
        if any(getattr(c, f) != getattr(base, f) for f in SHARED):
            raise SpecError("configs trained together must share model, corpus, tokens, "
                            "context_len, heldout_tokens, seed, device and dtype",
                            "train them in separate calls")
    check_train(configs, out, model=model)  # before the corpus or model loads
    corpus = load_corpus(base.corpus)
    check_train_corpus(base, corpus)
    keys = [cache_key(c, corpus.sha256) for c in configs]
    summaries: list[TrainSummary | None] = [_cached(k) for k in keys]
    todo = [i for i, s in enumerate(summaries) if s is None]
    if todo:
        model = model or load_model(base.model, base.device, base.dtype,
                                    trust_remote_code=base.trust_remote_code)
        hooks = sorted({model.hook_point(configs[i].hook).name for i in todo})
        t0 = time.perf_counter()
        train_acts, ho_acts = _collect(base, corpus, model, hooks)
        collect_s = time.perf_counter() - t0
        for i in todo:
            c, hook = configs[i], model.hook_point(configs[i].hook).name
            summaries[i] = _train_one(c, keys[i], model, hook, train_acts[hook][: c.tokens],
                                      ho_acts[hook], collect_s, log)
    result = [s for s in summaries if s is not None]
    if out is not None:
        _copy_out(configs, result, Path(out))
    return result


def training_contexts(base: TrainConfig, corpus: Corpus, model: HookedModel
                      ) -> tuple[Contexts, Contexts]:
    """Training and held-out contexts from the seeded document split."""
    splits = split_documents(len(corpus.documents), SPLITS, base.seed)
    per_ctx = base.context_len - 1
    out = []
    for part, tokens in (("train", base.tokens), ("heldout", base.heldout_tokens)):
        docs = [corpus.documents[j] for j in splits[part]]
        out.append(make_contexts(docs, model.tokenize, model.bos_id, base.context_len,
                                 n_contexts=-(-tokens // per_ctx)))
    return out[0], out[1]


def _collect(base: TrainConfig, corpus: Corpus, model: HookedModel, hooks: list[str]
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One activation pass: (training, held-out) residuals at every hook."""
    train_ctx, ho_ctx = training_contexts(base, corpus, model)
    with progress(True, len(train_ctx) + len(ho_ctx), label="collecting activations",
                  unit="contexts") as advance:
        return (collect_activations(model, train_ctx, hooks, progress=advance),
                collect_activations(model, ho_ctx, hooks, progress=advance))


def _train_one(c: TrainConfig, key: str, model: HookedModel, hook: str, acts: torch.Tensor,
               heldout: torch.Tensor, collect_s: float, log: Callable[[str], None]
               ) -> TrainSummary:
    log(f"training {c.arch} SAE, width {c.width}, at {hook} on {len(acts):,} tokens x "
        f"{c.epochs} epochs")
    t = time.perf_counter()
    sae = fit_sae(c, acts, model.name, hook)
    train_s = time.perf_counter() - t
    return _store(c, key, sae, evaluate_sae(sae, heldout), len(heldout), len(acts), train_s,
                  collect_s)


def destinations(configs: Sequence[TrainConfig], out: str | Path) -> list[Path]:
    """Where each trained SAE goes: ``out`` (one config) or ``out/<arch>-<width>-L<layer>``."""
    out = Path(out)
    return [out if len(configs) == 1 else out / (
        f"{c.arch}-{c.width}-L{HookPoint.parse(c.hook).layer}") for c in configs]


def check_destination(dest: Path) -> None:
    """A trained SAE replaces only a folder steerscreen trained into before (it holds a
    training summary): never a user's files, never another SAE."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ArtifactError(f"cannot write the SAE to {str(dest)!r}: it is a file",
                            "choose a folder path for --out")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / SUMMARY).is_file():
        raise ArtifactError(f"refusing to replace {str(dest)!r}: a non-empty folder that "
                            "train-sae did not write", "choose a new or empty --out folder")


def _copy_out(configs: list[TrainConfig], result: list[TrainSummary], out: Path) -> None:
    for s, dest in zip(result, destinations(configs, out), strict=True):
        check_destination(dest)
        with atomic_dir(dest) as tmp:
            shutil.copytree(s.sae_path, tmp, dirs_exist_ok=True)
            s.sae_path = str(dest)
            write_json(tmp / SUMMARY, asdict(s))


def _cached(key: str) -> TrainSummary | None:
    path = cache_dir("saes") / key / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = TrainSummary(**json.loads(path.read_text()))
        load_sae(str(path.parent))  # a corrupt cache entry is retrained, not trusted
    except Exception:
        return None
    summary.cached = True
    summary.sae_path = str(path.parent)
    return summary


def _store(cfg: TrainConfig, key: str, sae, metrics: dict, n_ho: int, n_train: int,
           train_s: float, collect_s: float) -> TrainSummary:
    import sae_lens

    folder = cache_dir("saes") / key
    summary = TrainSummary(
        config=asdict(cfg), explained_variance=metrics["explained_variance"],
        mean_l0=metrics["mean_l0"], dead_fraction=metrics["dead_fraction"], heldout_tokens=n_ho,
        train_tokens=n_train, train_seconds=train_s, collect_seconds=collect_s, cache_key=key,
        sae_path=str(folder),
        versions={"steerscreen": __version__, "sae_lens": sae_lens.__version__,
                  "torch": torch.__version__},
    )
    save_sae(sae, folder, extra_metadata={"steerscreen_training": asdict(cfg)})
    write_json(folder / SUMMARY, asdict(summary))
    return summary


def print_summaries(summaries: list[TrainSummary]) -> None:
    """The held-out evaluation of every trained SAE, as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="held-out evaluation")
    for col in ("arch", "width", "hook", "explained var.", "mean L0", "dead", "train s", "SAE"):
        table.add_column(col)
    for s in summaries:
        c = s.config
        table.add_row(c["arch"], str(c["width"]), c["hook"], f"{s.explained_variance:.3f}",
                      f"{s.mean_l0:.1f}", f"{s.dead_fraction:.1%}",
                      "cached" if s.cached else f"{s.train_seconds:.0f}", s.sae_path)
    Console().print(table)


__all__ = [
    "TrainConfig",
    "TrainSummary",
    "cache_key",
    "check_train",
    "check_train_corpus",
    "config_variants",
    "print_summaries",
    "train_saes",
    "training_contexts",
]
