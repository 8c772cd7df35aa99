"""``screen``: rank every feature of an SAE by predicted cleanliness, with no steering.

:func:`run_screen` runs the stats pass for any SAE into its own folder (at the predictor's
strength, so the dose-dependent columns match), adds ``base_pass`` when the predictor uses it
(:func:`~steerscreen.pipeline.steer.base_pass`, the steer stage's own computation), applies the
predictor and writes ``screen.parquet`` and ``screen.csv``: every feature ranked by predicted
cleanliness (dead features last), with intervals and drivers, and the predicted dose
(docs/method.md §2): ``pred_alpha = sqrt(target_kl / exp(lin_kl))``, the alpha that should cost
``target_kl`` nats of KL (the stats pass's linear response), and ``pred_strength = pred_alpha / r``
(NaN where lin_kl is, e.g. a stats pass with ``--linear-contexts 0``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from steerscreen.config import ScreenConfig, StatsConfig
from steerscreen.errors import ArtifactError, SpecError
from steerscreen.files import sha256_file, user_path
from steerscreen.layout import (
    FEATURE_DOSE_STATS,
    PREDICTOR,
    SCREEN_CSV,
    SCREEN_TABLE,
    SCREENING,
    equal_kl_alpha,
)
from steerscreen.models import HookedModel
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.stats import run_stats
from steerscreen.pipeline.steer import base_pass, lin_pass
from steerscreen.report.explain import Explanation, explain
from steerscreen.saes.files import WEIGHTS_FILENAME
from steerscreen.saes.io import LoadedSAE
from steerscreen.screening.data import DOSE_COLUMNS, with_dose_stats
from steerscreen.screening.predictor import Predictor


@dataclass(frozen=True)
class ScreenResult:
    table: pl.DataFrame
    parquet: Path
    csv: Path


def run_screen(predictor_path: str | Path, stats_cfg: StatsConfig, out: str | Path, *,
               downstream_sae: str | None = None, downstream_hook: str | None = None,
               pass_positions: int = 256, force: bool = False,
               log: Callable[[str], None] | None = None, model: HookedModel | None = None,
               sae: LoadedSAE | None = None, down: LoadedSAE | None = None,
               target_kl: float = 0.25) -> ScreenResult:
    """Stats pass for ``stats_cfg`` into ``out`` (at the predictor's strength), then rank.

    ``target_kl``: the KL of the predicted dose columns (``pred_alpha``, ``pred_strength``).
    ``model`` / ``sae`` / ``down``: already-loaded objects instead of the specs (tests)."""
    predictor = Predictor.load(predictor_path)
    for name in (SCREEN_TABLE, SCREEN_CSV):  # before the stats pass, not after it
        RunDir(out).claim(name)
    s = float(predictor.dose["strength"])
    stats_cfg = _as_trained(stats_cfg, predictor)
    uses = [c for c in ("base_pass", "lin_pass") if c in predictor.columns]
    needs_pass = bool(uses)
    if needs_pass and downstream_sae is None and down is None:
        raise SpecError(f"the predictor uses {' and '.join(uses)}, which needs the downstream "
                        "SAE",
                        "pass --downstream-sae (and --downstream-hook) as used in training: "
                        f"{predictor.trained_on.get('downstream_hook')}")
    if needs_pass and down is None:  # a missing or mismatched S' fails now, not after the pass
        _check_downstream(str(downstream_sae), downstream_hook, stats_cfg.model, model)
    res = run_stats(stats_cfg, out, force=force, log=log, model=model, sae=sae,
                    progress=log is not None)
    run = RunDir(out)
    key = _key(run, predictor_path, target_kl, pass_positions=pass_positions, downstream=(
        _downstream_id(downstream_sae, down), downstream_hook) if needs_pass else None)
    if not force and (kept := _kept(run, key)) is not None:  # explain after screen: no pass
        return kept
    stats = run.read_table(RunDir.FEATURE_STATS)
    r = float(res.residual_norm)
    lin = (stats["lin_kl"].cast(pl.Float64).fill_null(np.nan).to_numpy()
           if "lin_kl" in stats.columns else np.full(stats.height, np.nan))
    if needs_pass:
        alpha = s * r
        scale = None
        if "target_kl" in predictor.dose:  # trained at the equal-KL dose: each at its own
            own = equal_kl_alpha(float(predictor.dose["target_kl"]), np.exp(lin))
            scale = np.where(np.isfinite(own), own / alpha, 1.0)
        cols = _pass_columns(stats_cfg, downstream_sae, downstream_hook, alpha, pass_positions,
                             model, sae, down, uses, scale)
        stats = stats.with_columns([pl.Series(k, v) for k, v in cols.items()])
    return _write(run, rank_features(predictor, stats, r, target_kl, log), key)


def screen(cfg: ScreenConfig, out: str | Path, *, force: bool = False,
           log: Callable[[str], None] | None = None, model: HookedModel | None = None,
           sae: LoadedSAE | None = None, down: LoadedSAE | None = None) -> ScreenResult:
    """``steerscreen screen``: :func:`run_screen` with a :class:`ScreenConfig` (the CLI and
    the notebook API, :func:`steerscreen.notebook.screen`, both come through here)."""
    return run_screen(cfg.predictor, cfg.stats_config(strength=0.25), out,
                      downstream_sae=cfg.downstream_sae, downstream_hook=cfg.downstream_hook,
                      pass_positions=cfg.pass_positions, force=force, log=log, model=model,
                      sae=sae, down=down, target_kl=cfg.target_kl)


def explain_features(cfg: ScreenConfig, out: str | Path, features: Sequence[int], *,
                     force: bool = False, log: Callable[[str], None] | None = None
                     ) -> list[Explanation]:
    """``steerscreen explain``: the screen of ``cfg`` in ``out`` (its stats pass reused when
    recorded there), then one :class:`~steerscreen.report.explain.Explanation` per feature."""
    from steerscreen.saes.io import read_sae_header

    header = read_sae_header(cfg.sae)  # a feature id out of range fails before the pass
    bad = [f for f in features if f < 0 or (header is not None and f >= header.d_sae)]
    if bad or not features:
        raise SpecError(f"feature id(s) {', '.join(map(str, bad)) or '(none given)'} are not "
                        f"features of {cfg.sae!r}"
                        + (f" (ids 0..{header.d_sae - 1})" if header is not None else ""),
                        "pass one or more feature ids of this SAE after the options")
    screen(cfg, out, force=force, log=log)
    predictor = Predictor.load(cfg.predictor)
    return [explain(out, predictor, int(f)) for f in features]


def screen_run(run: str | Path, *, target_kl: float = 0.25,
               log: Callable[[str], None] | None = None) -> ScreenResult:
    """Rank every feature of a fitted run's own SAE into ``RUN/screen.parquet`` and ``.csv``.

    No pass over the model: the run's ``feature_stats`` already hold every feature, and its
    ``feature_dose_stats`` the dose columns at the dose the predictor was trained on (the
    columns :func:`run_screen` would recompute). A study writes one per run."""
    rd = RunDir(run)
    predictor_file = rd.path / SCREENING / PREDICTOR
    if not predictor_file.is_file():
        raise ArtifactError(f"{str(rd.path)!r} has no fitted predictor ({SCREENING}/{PREDICTOR})",
                            f"run `steerscreen fit --run {rd.path}` first")
    for name in (SCREEN_TABLE, SCREEN_CSV):
        rd.claim(name)
    key = _key(rd, predictor_file, target_kl, dose_stats=True)
    if (kept := _kept(rd, key)) is not None:  # a study rerun with nothing changed
        return kept
    predictor = Predictor.load(predictor_file)
    dose = (rd.read_table(FEATURE_DOSE_STATS) if rd.file(FEATURE_DOSE_STATS).is_file()
            else None)
    stats = with_dose_stats(rd.read_table(RunDir.FEATURE_STATS), dose)
    r = float(rd.read_manifest()["residual_norm"])
    return _write(rd, rank_features(predictor, stats, r, target_kl, log), key)


def rank_features(predictor: Predictor, stats: pl.DataFrame, r: float, target_kl: float,
                  log: Callable[[str], None] | None = None) -> pl.DataFrame:
    """``predictor`` applied to every row of ``stats``, with the predicted dose (alpha and
    strength for ``target_kl`` nats of KL), ranked cleanest first with dead features last."""
    lin = (stats["lin_kl"].cast(pl.Float64).fill_null(np.nan).to_numpy()
           if "lin_kl" in stats.columns else np.full(stats.height, np.nan))
    ranked = predictor.predict(stats)
    pred_alpha = equal_kl_alpha(target_kl, np.exp(lin))
    ranked = ranked.join(pl.DataFrame({
        "feature": stats["feature"], "pred_alpha": pred_alpha, "pred_strength": pred_alpha / r,
        "target_kl": np.full(stats.height, float(target_kl))}), on="feature", how="left")
    # The dose columns the predictor read exist only here (feature_stats holds NaN): kept, so
    # an explanation (steerscreen explain) sees the predictor's inputs.
    dose = [c for c in DOSE_COLUMNS if c in predictor.columns and c in stats.columns]
    ranked = ranked.join(stats.select(["feature", *dose]), on="feature", how="left")
    flat = [o for o, m in predictor.models.items() if m.alpha is None]
    if flat and log is not None:
        log(f"note: the predictor found no signal for {', '.join(flat)} (its ridge chose the "
            "intercept alone), so those scores are the same for every feature")
    key = [pl.col("dead").cast(pl.Int8)] if "dead" in ranked.columns else []
    return ranked.sort([*key, pl.col("pred_cleanliness")], descending=[False] * len(key)
                       + [True], nulls_last=True).with_row_index("rank", offset=1)


def _key(run: RunDir, predictor: str | Path, target_kl: float, *, dose_stats: bool = False,
         **inputs: object) -> dict[str, object]:
    """What a screen is a function of (recorded as the manifest's ``screen``): the predictor,
    the stats table (and ``feature_dose_stats`` for a run's own screen), the target KL and the
    pass ``inputs``."""
    files = [RunDir.FEATURE_STATS, *([FEATURE_DOSE_STATS] if dose_stats else [])]
    return {"target_kl": float(target_kl), "predictor": sha256_file(user_path(predictor)),
            **{n: sha256_file(run.path / n) for n in files if (run.path / n).is_file()},
            **inputs}


def _downstream_id(spec: str | None, down: LoadedSAE | None) -> str | None:
    """S' by content: the loaded SAE's hash, else its local weights file's, else the spec."""
    if down is not None:
        return down.sha256
    weights = Path(str(spec)) / WEIGHTS_FILENAME
    return sha256_file(weights) if spec and weights.is_file() else spec


def _kept(run: RunDir, key: dict[str, object]) -> ScreenResult | None:
    """The screen already in ``run`` when it was made from ``key``, else None."""
    recorded = run.read_manifest().get("screen") or {}  # (update_manifest merges keys in)
    if {k: recorded.get(k) for k in key} != json.loads(json.dumps(key)) or not (
            run.file(SCREEN_TABLE).is_file() and run.file(SCREEN_CSV).is_file()):
        return None
    return ScreenResult(run.read_table(SCREEN_TABLE), run.file(SCREEN_TABLE),
                        run.file(SCREEN_CSV))


def _write(run: RunDir, ranked: pl.DataFrame, key: dict[str, object]) -> ScreenResult:
    run.write_table(SCREEN_TABLE, ranked)
    run.write_bytes(SCREEN_CSV, ranked.write_csv().encode())
    run.update_manifest({"screen": key})
    return ScreenResult(ranked, run.file(SCREEN_TABLE), run.file(SCREEN_CSV))


def _as_trained(cfg: StatsConfig, predictor: Predictor) -> StatsConfig:
    """The stats pass at the predictor's strength, with its training run's linearisation (or
    none) unless the caller chose one."""
    cfg = replace(cfg, strength=float(predictor.dose["strength"]))
    default = (StatsConfig.linear_contexts, StatsConfig.linear_len)
    if "linear" in predictor.trained_on and (cfg.linear_contexts, cfg.linear_len) == default:
        trained = predictor.trained_on["linear"]
        cfg = replace(cfg, linear_contexts=int(trained["contexts"]) if trained else 0,
                      linear_len=int(trained["context_len"]) if trained else None)
    return cfg


def _check_downstream(spec: str, hook: str | None, model_spec: str,
                      model: HookedModel | None) -> None:
    from steerscreen.models.shape import read_model_shape
    from steerscreen.saes import validate_pairing
    from steerscreen.saes.io import check_sae_spec, read_sae_header

    header = read_sae_header(spec)  # a local folder: its files checked
    if header is None:
        check_sae_spec(spec)
    shape = model if model is not None else read_model_shape(model_spec)
    if header is not None and shape is not None:
        validate_pairing(header, shape, hook)


def _pass_columns(cfg: StatsConfig, down_spec: str | None, down_hook: str | None, alpha: float,
                  positions: int, model: HookedModel | None, sae: LoadedSAE | None,
                  down: LoadedSAE | None, names: list[str], scale_F: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """``base_pass`` and/or ``lin_pass`` (``names``), as the steer stage computes them."""
    from steerscreen.corpus import load_corpus
    from steerscreen.models import load_model
    from steerscreen.saes import load_sae, validate_pairing

    model = model or load_model(cfg.model, cfg.device, cfg.dtype,
                                trust_remote_code=cfg.trust_remote_code)
    sae = sae or load_sae(cfg.sae, device=cfg.device)
    down = down or load_sae(str(down_spec), device=cfg.device)
    dhp = validate_pairing(down, model, down_hook)
    corpus = load_corpus(cfg.corpus)
    out = {}
    if "base_pass" in names:
        out["base_pass"] = base_pass(model, sae, down, dhp, cfg, corpus, positions, alpha,
                                     scale_F=scale_F)
    if "lin_pass" in names:
        hp = validate_pairing(sae, model, cfg.hook)
        out["lin_pass"] = lin_pass(model, sae, hp, down, dhp, cfg, corpus, positions, alpha,
                                   scale_F=scale_F)
    return out


def print_screen(res: ScreenResult, top: int) -> None:
    """The ``top`` cleanest features as a table on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"cleanest {min(top, res.table.height)} of {res.table.height} features")
    kl = res.table["target_kl"][0] if "target_kl" in res.table.columns and res.table.height \
        else None
    dose_col = f"strength (KL {kl:g})" if kl is not None else "strength"
    for col in ("rank", "feature", "cleanliness", "90% interval", "stability", "spread",
                dose_col, "drivers"):
        table.add_column(col)
    for r in res.table.head(top).iter_rows(named=True):
        s = r.get("pred_strength")
        dose = f"{s:.3g}" if s is not None and np.isfinite(s) else "–"
        table.add_row(str(r["rank"]), str(r["feature"]), f"{r['pred_cleanliness']:+.2f}",
                      f"[{r['pred_cleanliness_lo']:+.2f}, {r['pred_cleanliness_hi']:+.2f}]",
                      f"{r['pred_effect_stability']:.3f}", f"{r['pred_collateral_spread']:.2f}",
                      dose, escape(r["drivers"]))
    Console().print(table)


__all__ = ["ScreenResult", "explain_features", "print_screen", "rank_features", "run_screen",
           "screen", "screen_run"]
