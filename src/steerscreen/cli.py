"""The ``steerscreen`` command line: one command per pipeline stage, plus ``run`` for a study.

Every user error is a :class:`~steerscreen.errors.SteerscreenError`: printed as what was wrong and
what to do, with exit code 2 and no traceback. So is a write that fails (disk full, read-only,
permission denied); Ctrl-C exits with 130 and says how to resume (see docs/errors.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from steerscreen import __version__
from steerscreen.errors import SteerscreenError, from_os_error

INTERRUPTED = "interrupted: everything finished so far is saved; rerun the same command to resume"


class _Commands(typer.core.TyperGroup):
    """Every command's last line of defence, in one place: a SteerscreenError, a failed write
    or Ctrl-C gets its message and exit code instead of a traceback."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except SteerscreenError as e:
            _fail(e)
        except OSError as e:
            err = from_os_error(e)
            if err is None:
                raise
            _fail(err)
        except KeyboardInterrupt:
            console.print(f"[bold]{INTERRUPTED}[/]")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="steerscreen",
    help="Predict which SAE features will steer cleanly, before steering them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_Commands,
)
console = Console(stderr=True)
_RESUME_HELP = ("Continue the {stage} stage recorded in {folder} and fail if it records none (a "
                "mistyped path fails at once). Rerunning the same command resumes anyway; "
                "--resume never recomputes with another config and cannot go with --force.")


# Where a stage's shards run (steerscreen.cluster.ClusterOptions): the same options on stats and
# steer.
_Backend = Annotated[str, typer.Option(help="local (this process) or ray (one Ray task per "
                                       "shard; pip install 'steerscreen[ray]').")]
_Address = Annotated[str | None, typer.Option(help="Ray cluster to join (auto, HOST:PORT, "
                                              "ray://HOST:10001); default: start a local one.")]
_Workers = Annotated[int | None, typer.Option(help="CPUs of the local Ray instance (default: "
                                              "all).")]
_TaskCpus = Annotated[float, typer.Option(help="CPUs (and torch threads) per Ray task.")]
_TaskGpus = Annotated[float | None, typer.Option(help="GPUs per Ray task (default: 1 with "
                                                 "--device cuda, else 0).")]
_MaxRetries = Annotated[int, typer.Option(help="Reruns of a Ray task whose worker died.")]


def _fail(err: SteerscreenError) -> None:
    # Messages quote user input and specs ("hf:OWNER/REPO[/SUBFOLDER]"): never rich markup.
    console.print(f"[bold red]error:[/] {escape(err.what)}")
    if err.fix:
        console.print(f"[bold]fix:[/] {escape(err.fix)}")
    raise typer.Exit(err.exit_code)


def _version(value: bool) -> None:
    if value:
        print(f"steerscreen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Screen SAE features for clean steering: stats -> steer -> fit -> screen -> report."""


@app.command("train-sae")
def train_sae(
    out: Annotated[Path, typer.Option(help="Folder for the SAE (SAELens format); with several "
                                      "--arch values, one subfolder per SAE.")],
    model: Annotated[str, typer.Option(help="Model spec: embedded:smollm2-135m, "
                                       "embedded:gemma3-270m, hf:REPO, gguf:PATH or a folder.")]
    = "embedded:smollm2-135m",
    hook: Annotated[str, typer.Option(help="Hook point, e.g. blocks.12.hook_resid_post.")]
    = "blocks.12.hook_resid_post",
    arch: Annotated[str, typer.Option(help="topk, relu or jumprelu; a comma list trains several "
                                      "on one activation pass.")] = "topk",
    width: Annotated[int, typer.Option(help="Number of SAE features.")] = 4096,
    k: Annotated[int, typer.Option(help="TopK: active features per token.")] = 32,
    l1_coefficient: Annotated[float, typer.Option(help="ReLU: L1 penalty.")] = 4.0,
    target_l0: Annotated[float, typer.Option(help="JumpReLU: target mean L0.")] = 40.0,
    l0_coefficient: Annotated[float, typer.Option(help="JumpReLU: sparsity loss weight.")] = 5.0,
    tokens: Annotated[int, typer.Option(help="Training tokens.")] = 200_000,
    corpus: Annotated[str, typer.Option(help="Corpus spec: embedded, text:PATH, "
                                        "jsonl:PATH[:FIELD], hf:DATASET[:CONFIG]:SPLIT[:FIELD].")]
    = "embedded",
    context_len: Annotated[int, typer.Option(help="Tokens per context (BOS included).")] = 128,
    epochs: Annotated[int, typer.Option(help="Passes over the training tokens.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Training batch (tokens).")] = 1024,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 1e-3; "
                                             "3e-3 for jumprelu).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for splits, init and shuffling.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Model dtype: float32 or bfloat16.")] = "float32",
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Run Python code shipped with a hub model (off by default: "
        "it runs with your rights; read it first).")] = False,
) -> None:
    """Train ReLU, JumpReLU or TopK SAEs on the model's activations (cached by config)."""
    from steerscreen.saes.training import config_variants, train_saes

    archs = [a.strip() for a in arch.split(",") if a.strip()]
    configs = config_variants(
        archs, model=model, hook=hook, width=width, k=k, l1_coefficient=l1_coefficient,
        target_l0=target_l0, l0_coefficient=l0_coefficient, tokens=tokens, corpus=corpus,
        context_len=context_len, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    summaries = train_saes(configs, out=out,
                           log=lambda m: console.print(f"[dim]{m}[/]"))
    table = Table(title="held-out evaluation")
    for col in ("arch", "width", "hook", "explained var.", "mean L0", "dead", "train s", "SAE"):
        table.add_column(col)
    for s in summaries:
        c = s.config
        table.add_row(c["arch"], str(c["width"]), c["hook"], f"{s.explained_variance:.3f}",
                      f"{s.mean_l0:.1f}", f"{s.dead_fraction:.1%}",
                      "cached" if s.cached else f"{s.train_seconds:.0f}", s.sae_path)
    Console().print(table)


@app.command()
def stats(
    sae: Annotated[str, typer.Option(help="SAE spec: a folder from train-sae (PATH or "
                                     "local:PATH), saelens:RELEASE/SAE_ID or "
                                     "hf:OWNER/REPO or hf:OWNER/REPO/SUBFOLDER.")],
    out: Annotated[Path, typer.Option(help="Run folder: feature_stats.parquet, "
                                      "feature_examples.parquet and manifest.json land here.")],
    model: Annotated[str, typer.Option(help="Model spec: embedded:smollm2-135m, "
                                       "embedded:gemma3-270m, hf:REPO, gguf:PATH or a folder.")]
    = "embedded:smollm2-135m",
    hook: Annotated[str | None, typer.Option(help="Hook point, e.g. blocks.12.hook_resid_post "
                                             "(default: the one the SAE records).")] = None,
    corpus: Annotated[str, typer.Option(help="Corpus spec: embedded, text:PATH, "
                                        "jsonl:PATH[:FIELD], hf:DATASET[:CONFIG]:SPLIT[:FIELD]. "
                                        "Only its stats split is read.")] = "embedded",
    tokens: Annotated[int, typer.Option(help="Scored tokens (positions >= 1) of stats-split "
                                        "contexts.")] = 100_000,
    context_len: Annotated[int, typer.Option(help="Tokens per context (BOS included).")] = 64,
    batch_size: Annotated[int, typer.Option(help="Contexts per forward pass.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed for the document split and the reservoirs.")]
    = 0,
    strength: Annotated[float, typer.Option(help="s of the logit dose alpha = s * r, r = median "
                                            "residual norm at the hook.")] = 0.25,
    final_norm_contexts: Annotated[int, typer.Option(help="Contexts run to the end of the "
                                                     "model for sigma_fin.")] = 32,
    reservoir_size: Annotated[int, typer.Option(help="R: firings sampled per feature for "
                                                "shape and co-activation statistics.")] = 200,
    coact_size: Annotated[int | None, typer.Option(help="R_co <= R: reservoir slots that keep "
                                                   "their co-active set (default R).")] = None,
    max_partners: Annotated[int, typer.Option(help="P: co-active features kept per firing.")]
    = 64,
    n_examples: Annotated[int, typer.Option(help="K: top activating examples per feature.")]
    = 10,
    example_window: Annotated[int, typer.Option(help="W: tokens kept per example, ending at "
                                                "the firing.")] = 16,
    neighbour_threshold: Annotated[float, typer.Option(help="Decoder cosine above which a "
                                                       "feature is a neighbour.")] = 0.3,
    n_components: Annotated[int, typer.Option(help="k of the residual principal subspace.")]
    = 10,
    decode_examples: Annotated[bool, typer.Option(help="Decode example windows to text.")]
    = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Model dtype: float32 or bfloat16.")] = "float32",
    force: Annotated[bool, typer.Option(help="Recompute even if RUN records a stats stage with "
                                        "another config.")] = False,
    resume: Annotated[bool, typer.Option(help=_RESUME_HELP.format(stage="stats",
                                                                  folder="--out"))] = False,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between checkpoints of the "
                                                    "pass (0: after every batch); an "
                                                    "interrupted run resumes from the last.")]
    = 60.0,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Run Python code shipped with a hub model (off by default: "
        "it runs with your rights; read it first).")] = False,
    shard_contexts: Annotated[int, typer.Option(help="Contexts per shard (one Ray task each; "
                                                "the same value gives the same bits on either "
                                                "backend).")] = 256,
    backend: _Backend = "local",
    address: _Address = None,
    workers: _Workers = None,
    task_cpus: _TaskCpus = 1.0,
    task_gpus: _TaskGpus = None,
    max_retries: _MaxRetries = 3,
) -> None:
    """Pre-intervention statistics for every feature (METHOD §1), in one streaming pass."""
    from steerscreen.stats.stage import StatsConfig, run_stats

    cfg = StatsConfig(
        sae=sae, model=model, hook=hook, corpus=corpus, tokens=tokens,
        context_len=context_len, batch_size=batch_size, seed=seed, strength=strength,
        final_norm_contexts=final_norm_contexts, reservoir_size=reservoir_size,
        coact_size=coact_size, max_partners=max_partners, n_examples=n_examples,
        example_window=example_window, neighbour_threshold=neighbour_threshold,
        n_components=n_components, decode_examples=decode_examples, device=device,
        dtype=dtype, trust_remote_code=trust_remote_code, checkpoint_s=checkpoint_every,
        shard_contexts=shard_contexts, backend=backend, address=address, workers=workers,
        task_cpus=task_cpus, task_gpus=task_gpus, max_retries=max_retries)
    res = run_stats(cfg, out, force=force, resume=resume,
                    log=lambda m: console.print(f"[dim]{escape(m)}[/]"))
    state = "already complete (skipped)" if res.skipped else f"{res.seconds:.1f} s"
    console.print(
        f"[bold]stats[/]: {res.n_features:,} features ({res.n_alive:,} alive, {res.n_dead:,} "
        f"dead) over {res.n_positions:,} positions; r = {res.residual_norm:.4g}, alpha = "
        f"{res.alpha:.4g}; {state}\n  -> {escape(str(res.stats_path))}")


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise SteerscreenError(f"{flag} {text!r} is not a comma-separated list of numbers",
                               f"pass e.g. {flag} 0.25 or {flag} 0.125,0.25,0.5") from None


@app.command()
def steer(
    run: Annotated[Path, typer.Option(help="Run folder holding a complete stats stage; model, "
                                      "SAE, hook and corpus come from its manifest.")],
    downstream_sae: Annotated[str, typer.Option(help="S': SAE at a later hook (a folder from "
                                                "train-sae, saelens:..., hf:...).")],
    downstream_hook: Annotated[str | None, typer.Option(help="h' (default: the hook S' "
                                                        "records).")] = None,
    features: Annotated[int, typer.Option(help="N features, stratified by base_freq "
                                          "decile.")] = 512,
    feature_ids: Annotated[str | None, typer.Option(help="Explicit features instead: "
                                                    "\"3,17,40\" or a file of ids.")] = None,
    random_directions: Annotated[int, typer.Option(help="R random null directions.")] = 64,
    contexts: Annotated[int, typer.Option(help="C steering contexts.")] = 32,
    fresh_contexts: Annotated[int, typer.Option(help="Fresh contexts (disjoint documents) for "
                                                "held-out screening.")] = 32,
    context_len: Annotated[int, typer.Option(help="Tokens per context (BOS included).")] = 64,
    strengths: Annotated[str | None, typer.Option(help="Strengths s (alpha = s x residual "
                                                  "norm), comma-separated; default: one "
                                                  "calibrated s.")] = None,
    target_kl: Annotated[float, typer.Option(help="Calibration target: mean KL (nats) of "
                                             "random directions.")] = 0.25,
    kl_tolerance: Annotated[float, typer.Option(help="Calibration: relative tolerance.")] = 0.05,
    calibration_contexts: Annotated[int, typer.Option(help="Calibration-split contexts.")] = 16,
    calibration_directions: Annotated[int, typer.Option(help="Random directions used to "
                                                        "calibrate.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed for features, directions and contexts.")] = 0,
    batch_rows: Annotated[int | None, typer.Option(help="Steered rows per forward (default: "
                                                  "from free memory).")] = None,
    shard_directions: Annotated[int, typer.Option(help="Directions per shard file: the most "
                                                  "an interruption can lose.")] = 16,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option(help="Recompute over a steer stage recorded with "
                                        "another config.")] = False,
    resume: Annotated[bool, typer.Option(help=_RESUME_HELP.format(stage="steer",
                                                                  folder="--run"))] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Run Python code shipped with a hub model (off by default: "
        "it runs with your rights; read it first).")] = False,
    backend: _Backend = "local",
    address: _Address = None,
    workers: _Workers = None,
    task_cpus: _TaskCpus = 1.0,
    task_gpus: _TaskGpus = None,
    max_retries: _MaxRetries = 3,
) -> None:
    """Steer a sample of features and measure outcomes (METHOD §2-3); resumable."""
    from steerscreen.steering.stage import SteerConfig, run_steer

    cfg = SteerConfig(
        downstream_sae=downstream_sae, downstream_hook=downstream_hook, features=features,
        feature_ids=feature_ids, random_directions=random_directions, contexts=contexts,
        fresh_contexts=fresh_contexts, context_len=context_len,
        strengths=_floats(strengths, "--strengths"), target_kl=target_kl,
        kl_tolerance=kl_tolerance, calibration_contexts=calibration_contexts,
        calibration_directions=calibration_directions, seed=seed, batch_rows=batch_rows,
        shard_directions=shard_directions, device=device,
        trust_remote_code=trust_remote_code, backend=backend, address=address, workers=workers,
        task_cpus=task_cpus, task_gpus=task_gpus, max_retries=max_retries)
    res = run_steer(cfg, run, force=force, resume=resume,
                    log=lambda m: console.print(f"[dim]{escape(m)}[/]"))
    state = "already complete (skipped)" if res.skipped else f"{res.seconds:.1f} s"
    doses = ", ".join(f"s = {s:.4g} (alpha = {a:.4g})" for s, a in zip(res.strengths, res.alpha,
                                                                       strict=True))
    console.print(f"[bold]steer[/]: {res.n_features} features + {res.n_random} random directions "
                  f"at {doses}; {state}\n  -> {escape(str(res.outcomes_path))}")


@app.command()
def fit(
    run: Annotated[Path, typer.Option(help="Run folder with complete stats and steer stages.")],
    strength: Annotated[float | None, typer.Option(help="Outcomes at this strength (default: "
                                                   "the first positive one recorded).")] = None,
    n_splits: Annotated[int, typer.Option(help="K of repeated K-fold CV.")] = 5,
    n_repeats: Annotated[int, typer.Option(help="Repeats of K-fold CV.")] = 5,
    n_permutations: Annotated[int, typer.Option(help="Outcome permutations for the primary "
                                                "endpoint's permutation test.")] = 200,
    top_share: Annotated[float, typer.Option(help="Held-out screening: share kept per "
                                             "fold.")] = 0.2,
    conformal_level: Annotated[float, typer.Option(help="Coverage of prediction "
                                                   "intervals.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed for folds, tie-breaks and permutations.")] = 0,
    force: Annotated[bool, typer.Option(help="Recompute over a fit recorded with another "
                                        "config.")] = False,
    resume: Annotated[bool, typer.Option(help=_RESUME_HELP.format(stage="fit",
                                                                  folder="--run"))] = False,
) -> None:
    """Fit and validate predictors against the baselines (METHOD §4) -> RUN/screening/."""
    from steerscreen.screening.analysis import FitConfig
    from steerscreen.screening.stage import fit_lines, run_fit

    cfg = FitConfig(strength=strength, n_splits=n_splits, n_repeats=n_repeats,
                    n_permutations=n_permutations, top_share=top_share,
                    conformal_level=conformal_level, seed=seed)
    res = run_fit(cfg, run, force=force, resume=resume,
                  log=lambda m: console.print(f"[dim]{escape(m)}[/]"))
    for line in fit_lines(res.summary):
        console.print(escape(line))
    console.print(f"  -> {escape(str(res.folder))}/summary.json")


@app.command()
def screen(
    predictor: Annotated[Path, typer.Option(help="predictor.json from `steerscreen fit`.")],
    sae: Annotated[str, typer.Option(help="SAE to screen (folder, saelens:..., hf:...).")],
    out: Annotated[Path, typer.Option(help="Folder for the stats and screen.parquet/csv.")],
    model: Annotated[str, typer.Option(help="Model spec.")] = "embedded:smollm2-135m",
    corpus: Annotated[str, typer.Option(help="Corpus spec.")] = "embedded",
    hook: Annotated[str | None, typer.Option(help="Hook (default: the SAE's).")] = None,
    tokens: Annotated[int, typer.Option(help="Stats-pass tokens.")] = 50_000,
    downstream_sae: Annotated[str | None, typer.Option(help="S' for base_pass (needed when "
                                                       "the predictor uses it).")] = None,
    downstream_hook: Annotated[str | None, typer.Option(help="h' of S'.")] = None,
    top: Annotated[int, typer.Option(help="Rows to print.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the stats pass.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option(help="Recompute a stats stage with another "
                                        "config.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Run Python code shipped with a hub model (off by default: "
        "it runs with your rights; read it first).")] = False,
) -> None:
    """Rank every feature of an SAE by predicted cleanliness, with no steering."""
    from steerscreen.screening.stage import run_screen
    from steerscreen.stats.stage import StatsConfig

    cfg = StatsConfig(sae=sae, model=model, hook=hook, corpus=corpus, tokens=tokens,
                      seed=seed, device=device, trust_remote_code=trust_remote_code)
    res = run_screen(predictor, cfg, out, downstream_sae=downstream_sae,
                     downstream_hook=downstream_hook, force=force,
                     log=lambda m: console.print(f"[dim]{escape(m)}[/]"))
    table = Table(title=f"cleanest {min(top, res.table.height)} of {res.table.height} features")
    for col in ("rank", "feature", "cleanliness", "90% interval", "stability", "spread",
                "drivers"):
        table.add_column(col)
    for r in res.table.head(top).iter_rows(named=True):
        table.add_row(str(r["rank"]), str(r["feature"]), f"{r['pred_cleanliness']:+.2f}",
                      f"[{r['pred_cleanliness_lo']:+.2f}, {r['pred_cleanliness_hi']:+.2f}]",
                      f"{r['pred_effect_stability']:.3f}", f"{r['pred_collateral_spread']:.2f}",
                      escape(r["drivers"]))
    Console().print(table)
    console.print(f"-> {escape(str(res.parquet))} and {escape(str(res.csv))}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders (steer done).")],
    out: Annotated[Path | None, typer.Option(help="Folder for transfer.parquet and "
                                             "runs.parquet.")] = None,
) -> None:
    """Transfer: fit on each run, evaluate on every other; all runs side by side."""
    from steerscreen.screening.transfer import compare as run_compare

    transfer, per_run = run_compare(list(runs))
    table = Table(title="transfer: fit on train, Spearman rho on test features")
    for col in ("train", "test", "outcome", "n", "rho [95% CI]"):
        table.add_column(col)
    for r in transfer.iter_rows(named=True):
        table.add_row(escape(r["train"]), escape(r["test"]), r["outcome"], str(r["n_test"]),
                      f"{r['rho']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")
    Console().print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        transfer.write_parquet(out / "transfer.parquet")
        per_run.write_parquet(out / "runs.parquet")
        console.print(f"-> {escape(str(out))}/transfer.parquet, runs.parquet")


@app.command()
def report(
    run: Annotated[Path, typer.Option(help="A run folder (stats, steer, fit) or a study folder "
                                      "(study.json, runs/NAME/, comparison/).")],
) -> None:
    """Write the self-contained HTML report of a run or study (+ figures/, summary.md)."""
    from steerscreen.report import write_report

    res = write_report(run)
    console.print(f"[bold]report[/] ({res.kind}): {len(res.figures)} figures, "
                  f"{res.seconds:.1f} s\n  -> {escape(str(res.html))}\n  -> "
                  f"{escape(str(res.summary))}")


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="Study config (TOML or YAML; see configs/ "
                                                "and docs/study.md). Default: the embedded "
                                                "study (SmolLM2, SAEs trained here).")] = None,
    preset: Annotated[str | None, typer.Option(help="quick (<= 15 min on 2 CPU cores), default "
                                               "(<= 90 min) or full (METHOD's sizes; a GPU "
                                               "job). Overrides the config's preset.")] = None,
    out: Annotated[Path, typer.Option(help="Study folder (runs/, comparison/, report.html); "
                                      "rerunning into it resumes.")] = Path("study"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the config, print the "
                                          "plan and exit (nothing is loaded or written).")]
    = False,
    force: Annotated[bool, typer.Option(help="Recompute stages recorded with another "
                                        "config.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the study in --out and fail if it holds "
                                         "none (a mistyped path fails at once). Rerunning the "
                                         "same command resumes anyway; --resume never "
                                         "recomputes with another config and cannot go with "
                                         "--force.")] = False,
) -> None:
    """Run a whole study (train SAEs, stats, steer, fit, compare, report); resumable."""
    from steerscreen.study import describe_plan, load_config, make_plan, run_study

    cfg = load_config(config, preset)
    plan = make_plan(cfg)
    table = Table(title=f"study {escape(cfg.name)}: {escape(cfg.model)}, preset {cfg.preset}, "
                  f"{len(cfg.saes)} SAEs -> {escape(str(out))}")
    for col in ("stage", "run", "estimate", "work"):
        table.add_column(col)
    from steerscreen.study.plan import format_duration

    for step in plan.steps:
        table.add_row(step.stage, escape(step.target), format_duration(step.estimate_s),
                      escape(step.work))
    Console(stderr=True).print(table)
    console.print(escape(describe_plan(plan)[-1]))
    if dry_run:
        return
    res = run_study(cfg, out, force=force, resume=resume,
                    log=lambda m: console.print(f"[dim]{escape(m)}[/]"))
    total = sum(v for k, v in res.timings.items() if "/" in k or k in (
        "load_model", "train", "compare", "report"))
    console.print(f"[bold]study complete[/] in {format_duration(total)}")
    if res.headline is not None:
        console.print(f"headline ({escape(res.headline.run)}, cleanliness on fresh contexts):")
        for line in res.headline.lines():
            console.print(f"  {escape(line)}")
    if res.report is not None:
        console.print(f"report: {escape(str(res.report))}")


@app.command()
def plan(
    config: Annotated[Path | None, typer.Option(help="Study config (TOML or YAML; see configs/). "
                                                "Default: the embedded study.")] = None,
    preset: Annotated[str | None, typer.Option(help="quick, default or full. Overrides the "
                                               "config's preset.")] = None,
    gpu: Annotated[str, typer.Option(help="h100, h200, a100, a10g, l4 or cpu (the 2-core "
                                     "reference machine).")] = "h100",
    workers: Annotated[int, typer.Option(help="Workers the stats and steer stages split "
                                         "over.")] = 1,
) -> None:
    """Estimate a study's tokens, FLOPs, memory and GPU-hours before anything loads."""
    from steerscreen.study import load_config
    from steerscreen.study.cost import plan_cost

    cost = plan_cost(load_config(config, preset), gpu.lower(), workers)
    table = Table(title=f"plan {escape(cost.study)}: {escape(cost.spec)} ({cost.dtype}), preset "
                  f"{cost.preset}, {cost.workers} x {cost.device.name}")
    for col in ("stage", "run", "tokens", "forwards full / from h", "TFLOP", "GiB/worker",
                "GPU-h", "wall", "note"):
        table.add_column(col, justify="left" if col in ("stage", "run", "note") else "right")
    for r in cost.rows():
        table.add_row(*(escape(x) for x in r))
    out = Console(width=140)
    out.print(table)
    for line in cost.footer():
        out.print(escape(line))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
