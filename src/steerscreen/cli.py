"""The ``steerscreen`` command line: one command per stage, plus ``run`` for a study.

Each stage command's options are its config's fields (``steerscreen.config``; built by
:mod:`steerscreen.cli_options`), so the CLI, a study file and the Python API take the same
settings. Every user error is a :class:`~steerscreen.errors.SteerscreenError`: printed as what
was wrong and what to do, with exit code 2 and no traceback. So is a write that fails (disk
full, read-only, permission denied); Ctrl-C exits with 130 and says how to resume
(docs/errors.md).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from steerscreen import __version__
from steerscreen.cli_options import (
    RESUME,
    Commands,
    argument,
    command,
    config_options,
    config_values,
    console,
    flag_param,
    option,
)
from steerscreen.config import FitConfig, ScreenConfig, StatsConfig, SteerConfig, TrainConfig

app = typer.Typer(name="steerscreen", help="Predict which SAE features will steer cleanly, "
                  "before steering them.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, cls=Commands)


def _log(message: str) -> None:
    console.print(f"[dim]{escape(message)}[/]")


def _version(value: bool) -> None:
    if value:
        print(f"steerscreen {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False
         ) -> None:
    """Screen SAE features for clean steering: stats -> steer -> fit -> screen -> report."""


def _folder(name: str, help: str) -> Any:
    return option(name, Path, dataclasses.MISSING, help)


FORCE = flag_param("force", "Recompute a stage recorded in the folder with another config.")


def _resume(stage: str, folder: str) -> Any:
    return flag_param("resume", RESUME.format(stage=stage, folder=folder))


def _train_sae(out: Path, **kw: Any) -> None:
    from steerscreen.pipeline.train import config_variants, print_summaries, train_saes

    fields = config_values(TrainConfig, kw)
    archs = [a.strip() for a in str(fields.pop("arch")).split(",") if a.strip()]
    print_summaries(train_saes(config_variants(archs, **fields), out=out, log=_log))


def _stats(out: Path, force: bool, resume: bool, **kw: Any) -> None:
    from steerscreen.pipeline.stats import run_stats

    res = run_stats(StatsConfig(**config_values(StatsConfig, kw)), out, force=force,
                    resume=resume, log=_log)
    state = "already complete (skipped)" if res.skipped else f"{res.seconds:.1f} s"
    console.print(
        f"[bold]stats[/]: {res.n_features:,} features ({res.n_alive:,} alive, {res.n_dead:,} "
        f"dead) over {res.n_positions:,} positions; r = {res.residual_norm:.4g}, alpha = "
        f"{res.alpha:.4g}; {state}\n  -> {escape(str(res.stats_path))}")


def _steer(run: Path, force: bool, resume: bool, **kw: Any) -> None:
    from steerscreen.pipeline.steer import run_steer

    res = run_steer(SteerConfig(**config_values(SteerConfig, kw)), run, force=force,
                    resume=resume, log=_log)
    state = "already complete (skipped)" if res.skipped else f"{res.seconds:.1f} s"
    if res.dose_mode == "equal-kl" and res.alpha_range:
        a = res.alpha_range
        doses = (f"equal-KL dose (predicted KL {res.target_kl:.4g} each; alpha "
                 f"{a['min']:.4g}..{a['max']:.4g}, median {a['median']:.4g})")
    else:
        doses = ", ".join(f"s = {s:.4g} (alpha = {a:.4g})"
                          for s, a in zip(res.strengths, res.alpha, strict=True))
    console.print(f"[bold]steer[/]: {res.n_features} features + {res.n_random} random directions "
                  f"at {doses}; {state}\n  -> {escape(str(res.outcomes_path))}")


def _fit(run: Path, force: bool, resume: bool, **kw: Any) -> None:
    from steerscreen.pipeline.fit import fit_lines, run_fit

    res = run_fit(FitConfig(**config_values(FitConfig, kw)), run, force=force, resume=resume,
                  log=_log)
    for line in fit_lines(res.summary):
        console.print(escape(line))
    console.print(f"  -> {escape(str(res.folder))}/summary.json")


def _screen(out: Path, top: int, force: bool, **kw: Any) -> None:
    from steerscreen.pipeline.screen import print_screen, screen

    res = screen(ScreenConfig(**config_values(ScreenConfig, kw)), out, force=force, log=_log)
    print_screen(res, top)
    console.print(f"-> {escape(str(res.parquet))} and {escape(str(res.csv))}")


def _explain(features: list[int], out: Path, force: bool, **kw: Any) -> None:
    from steerscreen.pipeline.screen import explain_features

    cfg = ScreenConfig(**config_values(ScreenConfig, kw))
    for card in explain_features(cfg, out, features, force=force, log=_log):
        print(card.text(), end="\n\n")


_OUT_TRAIN = ("Folder for the SAE (SAELens format); with several --arch values, one subfolder per "
              "SAE.")
_OUT_STATS = ("Run folder: feature_stats.parquet, feature_examples.parquet and manifest.json land "
              "here.")
_RUN = "Run folder holding a complete {stage} stage."
command(app, "train-sae", [_folder("out", _OUT_TRAIN), *config_options(TrainConfig)],
        _train_sae, "Train ReLU, JumpReLU or TopK SAEs on the model's activations (cached by "
        "config).")
command(app, "stats", [_folder("out", _OUT_STATS), *config_options(StatsConfig), FORCE,
                       _resume("stats", "--out")], _stats,
        "Pre-intervention statistics for every feature (docs/method.md §1), in one streaming "
        "pass.")
command(app, "steer", [_folder("run", _RUN.format(stage="stats")), *config_options(SteerConfig),
                       FORCE, _resume("steer", "--run")], _steer,
        "Steer a sample of features and measure outcomes (docs/method.md §2-3); resumable.")
command(app, "fit", [_folder("run", _RUN.format(stage="steer")), *config_options(FitConfig),
                     FORCE, _resume("fit", "--run")], _fit,
        "Fit and validate predictors against the baselines (docs/method.md §4) -> "
        "RUN/screening/.")
command(app, "screen", [_folder("out", "Folder for the stats and screen.parquet/csv."),
                        *config_options(ScreenConfig), option("top", int, 20, "Rows to print."),
                        FORCE], _screen,
        "Rank every feature of an SAE by predicted cleanliness, with no steering.")
command(app, "explain", [argument("features", list[int], "Feature ids to explain."),
                         option("out", Path, Path("screen"), "The screen's folder (its stats "
                                "pass is reused when recorded there)."),
                         *config_options(ScreenConfig), FORCE], _explain,
        "Explain features of a screen: rank, predictions, interval, dose, drivers, examples.")


@app.command()
def compare(runs: Annotated[list[Path], typer.Argument(help="Two or more run folders (steer "
                                                        "done).")],
            out: Annotated[Path | None, typer.Option(help="Folder for transfer.parquet and "
                                                     "runs.parquet.")] = None) -> None:
    """Transfer: fit on each run, evaluate on every other; all runs side by side."""
    from steerscreen.pipeline import compare as comparison

    if out is not None:
        comparison.check_comparison_folder(out)  # before the work, not after it
    c = comparison.compare(list(runs))
    comparison.print_transfer(c.transfer)
    if out is not None:
        comparison.write_comparison(c, out)
        console.print(f"-> {escape(str(out))}/transfer.parquet, runs.parquet")


@app.command()
def report(run: Annotated[Path, typer.Option(help="A run folder (stats, steer, fit) or a study "
                                             "folder (study.json, runs/NAME/, comparison/).")],
           feature: Annotated[list[int] | None, typer.Option(
               help="Also show this feature of a run on a card, with its steered text "
               "(loads the model; repeat for several).")] = None) -> None:
    """Write the self-contained HTML report of a run or study (+ figures/, summary.md)."""
    from steerscreen.report import write_report

    if feature:  # the model loads only for this (a report alone takes seconds)
        from steerscreen.pipeline.generate import requested

        requested(run, feature, log=_log)
    res = write_report(run, features=feature or ())
    console.print(f"[bold]report[/] ({res.kind}): {len(res.figures)} figures, "
                  f"{res.seconds:.1f} s\n  -> {escape(str(res.html))}\n  -> "
                  f"{escape(str(res.summary))}")


_Config = Annotated[Path | None, typer.Option(help="Study config (TOML or YAML; see configs/ and "
                                              "docs/study.md). Default: the embedded study.")]
_Preset = Annotated[str | None, typer.Option(help="quick (<= 15 min on 2 CPU cores), default "
                                             "(<= 60 min) or full (the method's sizes; a GPU "
                                             "job). Overrides the config's preset.")]


@app.command()
def run(config: _Config = None, preset: _Preset = None,
        out: Annotated[Path, typer.Option(help="Study folder (runs/, comparison/, report.html); "
                                          "rerunning into it resumes.")] = Path("study"),
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the config, print "
                                              "the plan and exit (nothing is loaded or "
                                              "written).")] = False,
        force: Annotated[bool, typer.Option(help="Recompute stages recorded with another "
                                            "config.")] = False,
        resume: Annotated[bool, typer.Option(help=RESUME.format(stage="study", folder="--out")
                                             )] = False) -> None:
    """Run a whole study (train SAEs, stats, steer, fit, compare, report); resumable."""
    from steerscreen.pipeline.plan import print_plan
    from steerscreen.pipeline.study import load_config, print_result, run_study

    cfg = load_config(config, preset)
    print_plan(cfg, out, console)
    if not dry_run:
        print_result(run_study(cfg, out, force=force, resume=resume, log=_log), console)


@app.command()
def plan(config: _Config = None, preset: _Preset = None,
         gpu: Annotated[str, typer.Option(help="h100, h200, a100, a10g, l4 or cpu (the 2-core "
                                          "reference machine).")] = "h100",
         workers: Annotated[int, typer.Option(help="Workers the stats and steer stages split "
                                              "over.")] = 1) -> None:
    """Estimate a study's tokens, FLOPs, memory and GPU-hours before anything loads."""
    from steerscreen.pipeline.cost import plan_cost, print_cost
    from steerscreen.pipeline.study import load_config

    print_cost(plan_cost(load_config(config, preset), gpu.lower(), workers))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
