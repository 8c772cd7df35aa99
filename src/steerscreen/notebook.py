"""The notebook API: a finished study as objects, and the screen on objects already loaded.

::

    import steerscreen as ss
    study = ss.Study.open("study")             # runs, tables (polars), verdicts, report path
    study.runs["l12-topk-1024"].outcomes       # steering_outcomes as a DataFrame
    res = ss.screen(model=hf_model, tokenizer=tok, sae=sae_lens_sae,
                    hook="blocks.12.hook_resid_post", corpus=texts,
                    predictor="study/runs/l12-topk-1024/screening/predictor.json",
                    downstream_sae=sae_16)        # S', when the predictor reads base_pass
    res.top(20)                                # features, predictions, intervals, dose
    res.explain(1234)                          # drivers, interval, dose, examples

:func:`screen` wraps what the caller holds (a transformers model and tokenizer, a SAELens
``SAE``, a list of strings or a ``datasets.Dataset``) and runs the ``steerscreen screen`` stage
code on it (:func:`steerscreen.pipeline.screen.screen`): no second implementation, the same
files in the same folder layout, resumable like the CLI. Objects render as HTML in Jupyter.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from steerscreen.config import ScreenConfig
from steerscreen.errors import ArtifactError, SpecError
from steerscreen.files import atomic_path, cache_dir, user_path
from steerscreen.layout import (
    PREDICTOR,
    REPORT,
    SCREEN_TABLE,
    SCREENING,
    STUDY_FILE,
)
from steerscreen.report.explain import Explanation, explain
from steerscreen.report.html import esc, table, tag
from steerscreen.report.load import RunData, StudyData, load_study

TOP_COLUMNS = ("rank", "feature", "pred_cleanliness", "pred_cleanliness_lo",
               "pred_cleanliness_hi", "pred_effect_stability", "pred_collateral_spread",
               "pred_strength", "pred_alpha", "drivers")
"""What :meth:`Screen.top` returns."""


@dataclass(frozen=True)
class Screen:
    """A ranked screen: every feature of one SAE (``screen.parquet`` in ``folder``)."""

    folder: Path
    predictor: Path

    @cached_property
    def table(self) -> pl.DataFrame:
        """Every feature, ranked cleanest first (dead features last)."""
        return pl.read_parquet(self.folder / SCREEN_TABLE)

    def top(self, n: int = 20) -> pl.DataFrame:
        """The ``n`` features predicted cleanest: predictions, interval, dose, drivers."""
        return self.table.select([c for c in TOP_COLUMNS if c in self.table.columns]).head(n)

    def explain(self, feature: int) -> Explanation:
        """One feature's rank, predictions and intervals, dose, drivers and examples (the card
        ``steerscreen explain`` prints)."""
        from steerscreen.screening.predictor import Predictor

        return explain(self.folder, Predictor.load(self.predictor), int(feature))

    def _repr_html_(self) -> str:
        top = self.top(20)
        return tag("div", tag("p", f"Screen of {self.table.height:,} features in ",
                              tag("code", str(self.folder)), " (top 20):"),
                   table(top.columns, top.rows()))


@dataclass(frozen=True)
class Run:
    """One run folder of a study: its tables as polars DataFrames, read when first used."""

    data: RunData

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def path(self) -> Path:
        return self.data.path

    @property
    def outcomes(self) -> pl.DataFrame | None:
        """``steering_outcomes.parquet``: one row per direction, strength and context set."""
        return self.data.outcomes

    @property
    def stats(self) -> pl.DataFrame | None:
        """``feature_stats.parquet``: every feature's pre-intervention statistics."""
        return self.data.stats

    @property
    def predictions(self) -> pl.DataFrame | None:
        """The fit's out-of-fold predictions of the steered features."""
        return self.data.predictions

    @property
    def summary(self) -> dict[str, Any] | None:
        """``screening/summary.json``: verdicts, endpoints, power."""
        return self.data.summary

    @property
    def verdicts(self) -> dict[str, str]:
        """outcome -> the fit's verdict, with its power ("underpowered (n = 96: ...)")."""
        return dict((self.summary or {}).get("verdicts") or {})

    @property
    def predictor(self) -> Path | None:
        p = self.path / SCREENING / PREDICTOR
        return p if p.is_file() else None

    @property
    def screen(self) -> Screen | None:
        """The run's own screen (every feature of its SAE), when the study wrote one."""
        if not (self.path / SCREEN_TABLE).is_file() or self.predictor is None:
            return None
        return Screen(self.path, self.predictor)

    def _repr_html_(self) -> str:
        return tag("div", tag("h4", f"run {self.name}"), _verdict_table({self.name: self}))


@dataclass(frozen=True)
class Study:
    """A study folder (``steerscreen run``): its runs, comparison tables and report."""

    data: StudyData

    @classmethod
    def open(cls, path: str | Path) -> Study:
        root = user_path(path)
        if not (root / STUDY_FILE).is_file():
            raise ArtifactError(f"{str(root)!r} is not a study folder (no {STUDY_FILE})",
                                "pass the --out folder of `steerscreen run`")
        return cls(load_study(root))

    @property
    def path(self) -> Path:
        return self.data.path

    @cached_property
    def runs(self) -> dict[str, Run]:
        return {r.name: Run(r.data) for r in self.data.runs if r.data is not None}

    @property
    def record(self) -> dict[str, Any]:
        """``study.json``: config, plan, timings, status."""
        return self.data.meta

    @property
    def transfer(self) -> pl.DataFrame | None:
        """Fit on each run, evaluated on every other (``comparison/transfer.parquet``)."""
        return self.data.transfer

    @property
    def per_run(self) -> pl.DataFrame | None:
        """All runs side by side (``comparison/runs.parquet``)."""
        return self.data.per_run

    @property
    def verdicts(self) -> pl.DataFrame:
        """Every test behind every run's verdicts (``screening/summary.json``'s
        ``verdict_tests``): run, outcome, test, estimate, CI, p, Holm p, detectable effect
        (``mde``), ``underpowered``, ``passed`` and the outcome's verdict."""
        rows = [{"run": name, **t, "verdict": run.verdicts.get(t.get("outcome"))}
                for name, run in self.runs.items()
                for t in (run.summary or {}).get("verdict_tests") or []]
        return pl.DataFrame(rows, infer_schema_length=None)

    @property
    def report(self) -> Path | None:
        p = self.path / REPORT
        return p if p.is_file() else None

    def _repr_html_(self) -> str:
        return tag("div", tag("h4", f"study {self.data.name}: {len(self.runs)} runs, ",
                              str(self.record.get("status", "?"))),
                   _verdict_table(self.runs),
                   tag("p", "report: ", tag("code", str(self.report or "not written"))))


def _verdict_table(runs: dict[str, Run]) -> str:
    rows = [(name, outcome, esc(v)) for name, run in runs.items()
            for outcome, v in run.verdicts.items()]
    return table(("run", "outcome", "verdict"), rows) if rows else \
        tag("p", "no verdicts yet (the fit has not run)")


def screen(*, model: Any, sae: Any, corpus: Any, predictor: str | Path,
           hook: str | None = None, tokenizer: Any = None, out: str | Path | None = None,
           downstream_sae: Any = None, downstream_hook: str | None = None,
           tokens: int = ScreenConfig.tokens, target_kl: float = ScreenConfig.target_kl,
           seed: int = 0, model_spec: str | None = None, text_column: str = "text",
           force: bool = False, log: Any = None) -> Screen:
    """Rank every feature of ``sae`` by predicted cleanliness, as ``steerscreen screen`` does.

    ``model``: a transformers causal LM (with ``tokenizer``), a
    :class:`~steerscreen.models.HookedModel` or a model spec. ``sae`` / ``downstream_sae``: a
    SAELens ``SAE``, a :class:`~steerscreen.saes.LoadedSAE` or a spec; S' is needed when the
    predictor reads ``base_pass`` (its hook defaults to the one it was trained with).
    ``corpus``: a list of strings, a ``datasets.Dataset`` (its ``text_column``) or a corpus
    spec. ``out``: the screen's folder (a rerun with the same inputs reuses its stats pass);
    default a new temporary folder. ``model_spec``: names an in-memory model in the manifest
    (read from its config when not given)."""
    from steerscreen.pipeline.screen import screen as run
    from steerscreen.screening.predictor import Predictor

    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="steerscreen-"))
    hooked, model_str = _model(model, tokenizer, model_spec)
    loaded, sae_str = _sae(sae)
    down, down_str = _sae(downstream_sae) if downstream_sae is not None else (None, None)
    if downstream_sae is not None and downstream_hook is None:
        downstream_hook = Predictor.load(predictor).trained_on.get("downstream_hook")
    cfg = ScreenConfig(predictor=str(predictor), sae=sae_str, model=model_str,
                       corpus=_corpus(corpus, text_column), hook=hook, tokens=tokens,
                       downstream_sae=down_str, downstream_hook=downstream_hook,
                       target_kl=target_kl, seed=seed)
    run(cfg, folder, force=force, log=log, model=hooked, sae=loaded, down=down)
    return Screen(folder, Path(predictor))


def _model(model: Any, tokenizer: Any, spec: str | None) -> tuple[Any, str]:
    from steerscreen.models import HookedModel, from_transformers, transformers_spec

    if isinstance(model, str):
        return None, model
    if isinstance(model, HookedModel):
        if spec is None:
            raise SpecError("a HookedModel does not say which spec it was loaded from",
                            "pass model_spec= (e.g. embedded:smollm2-135m)")
        return model, spec
    spec = spec or transformers_spec(model)
    return from_transformers(model, tokenizer, spec), spec


def _sae(sae: Any) -> tuple[Any, str]:
    from steerscreen.saes import LoadedSAE, from_saelens

    if isinstance(sae, str | Path):
        return None, str(sae)
    if isinstance(sae, LoadedSAE):
        return sae, sae.spec
    loaded = from_saelens(sae)
    return loaded, loaded.spec


def _corpus(corpus: Any, column: str) -> str:
    """A spec for ``corpus``: a list of strings or a Dataset is written once as JSON lines to
    the user cache, named by its content's hash (the manifest names the file, and a rerun on
    the same documents finds the same file, so its stats pass resumes)."""
    if isinstance(corpus, str | Path):
        return str(corpus)
    if hasattr(corpus, "column_names"):  # a datasets.Dataset
        if column not in corpus.column_names:
            raise SpecError(f"the dataset has no column {column!r} (it has "
                            f"{', '.join(corpus.column_names)})", "pass text_column=")
        corpus = corpus[column]
    docs = list(corpus) if not isinstance(corpus, bytes) else []
    if not docs or not all(isinstance(d, str) for d in docs):
        raise SpecError("corpus must be a non-empty list of strings, a datasets.Dataset or a "
                        "corpus spec", "pass e.g. corpus=['first document', 'second', ...]")
    text = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache_dir("corpora") / f"notebook-{digest}.jsonl"
    if not path.is_file():
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return f"jsonl:{path}"


__all__ = ["Run", "Screen", "Study", "screen"]
