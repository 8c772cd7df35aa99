"""Render ``docs/study.md`` from the config dataclasses, so every field is documented once.

    python -m steerscreen.pipeline.docs --write docs/study.md

Field descriptions are the attribute docstrings of the stage configs (``TrainConfig``,
``StatsConfig``, ``SteerConfig``, ``FitConfig``) and of ``StudyConfig`` / ``SAEEntry``; the
shipped configs' ``# needs:`` / ``# cost:`` comments fill the configs table. A test checks that
the committed file equals :func:`markdown`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from steerscreen.config import (
    OWNED,
    PRESET_BUDGET_S,
    PRESET_VALUES,
    PRESETS,
    STAGE_CLASSES,
    TOP_FIELDS,
    ClusterOptions,
    SAEEntry,
    StudyConfig,
    field_docs,
)

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

_INTRO = """\
# Studies: `steerscreen run`

A study compares several SAEs on one model (docs/method.md §5): it trains the SAEs it needs, then
runs `stats -> steer -> fit -> screen` for each SAE (one run folder each, the same downstream SAE
S' for all; the screen ranks every feature of the run's SAE by its own predictor, and the cards'
features get their steered text), compares the runs (transfer) and writes the report.

```bash
steerscreen run --preset quick --out STUDY          # the embedded study, <= 15 min on 2 cores
steerscreen run --out STUDY                         # the embedded study, default preset
steerscreen run --config configs/gpt2-small.toml --out STUDY     # a paper setting
steerscreen run --config FILE --dry-run             # validate and print the plan only
```

It prints its plan (every stage, its work and a time estimate) before it starts, and at the end
the report's path and three headline numbers of the first SAE: does the full predictor beat
frequency + magnitude (delta Spearman rho on fresh-context cleanliness), does it survive
residualisation on the baselines, and what does screening pay held out (top 20% by prediction vs
random selection), each with its CI.

Layout:

```
STUDY/study.json        resolved config, runs, plan, stage timings, headline, environment
STUDY/saes/NAME/        SAEs trained for the study (SAELens folders + training_summary.json)
STUDY/runs/NAME/        one run folder per SAE (docs/method.md §5)
STUDY/comparison/       transfer.parquet, runs.parquet
STUDY/report.html       the report (plus figures/ and summary.md)
```

**Resuming.** Every stage is cached: trained SAEs by their full config (in
`$STEERSCREEN_CACHE`), run stages by their manifest records, steering by shards, the stats pass
by a checkpoint (`checkpoint_s`). Interrupt a study and run the same command again: finished
work is skipped, the stats pass continues from its last checkpoint and the steer stage from its
last shard, to the tables an uninterrupted run gives. `--resume` says the same and fails at once
when `--out` holds no study (a mistyped path). A folder that holds a study with another config
is refused (name the differences) unless `--force` (never with `--resume`).

**The dose.** The calibrated strength (docs/method.md §2) depends on the model, hook, residual norm
and calibration contexts, not on the SAE: a study calibrates once and every run on that hook steers
at the same s (recorded in each run's manifest).
"""


def _attribute_docs(cls: type) -> dict[str, str]:
    """The fields' docstrings, with ``|`` escaped for a Markdown table cell."""
    return {k: v.replace("|", "\\|") for k, v in field_docs(cls).items()}


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:_}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _type(f: dataclasses.Field) -> str:
    # " | " would split a markdown table cell.
    return (str(f.type).replace("typing.", "").replace("Literal", "one of ")
            .replace(" | None", " or none").replace(" | ", " or "))


def markdown() -> str:
    return "\n".join([_INTRO, *_top_fields(), *_sae_fields(), *_presets(), *_sections(),
                      *_configs()]) + "\n"


def _top_fields() -> list[str]:
    out = ["## Top-level fields\n\n| field | type | default | meaning |\n|---|---|---|---|"]
    docs = _attribute_docs(StudyConfig)
    fields = {f.name: f for f in dataclasses.fields(StudyConfig)}
    for name in TOP_FIELDS:
        if name == "width":
            out.append("| `width` | int | preset | W of the built-in embedded study: SAEs of "
                       "width W and `wide_ratio` W, see Presets (used when the file lists no "
                       "[[sae]]; also the default width of trained [[sae]] entries) |")
            continue
        if name in STAGE_CLASSES:
            out.append(f"| `[{name}]` | table | preset | the {name} stage's settings (below) |")
            continue
        key = {"sae": "saes"}.get(name, name)
        f = fields[key]
        shown = "table" if name == "downstream" else ("tables" if name == "sae" else _type(f))
        default = "the embedded study" if name in ("sae", "downstream") else _fmt(_default(f))
        out.append(f"| `{'[[sae]]' if name == 'sae' else name}` | {shown} | {default} | "
                   f"{docs.get(key, '')} |")
    return out


def _sae_fields() -> list[str]:
    out = ["\n## `[[sae]]` and `[downstream]`\n\nOne `[[sae]]` table per SAE compared; "
           "`[downstream]` takes the same fields (its name defaults to `downstream`). An entry "
           "with `spec` uses that SAE; one without is trained by steerscreen on the study's "
           "model and corpus with the `[train]` settings.\n\n"
           "| field | type | default | meaning |\n|---|---|---|---|"]
    docs = _attribute_docs(SAEEntry)
    out += [f"| `{f.name}` | {_type(f)} | {_fmt(_default(f))} | {docs.get(f.name, '')} |"
            for f in dataclasses.fields(SAEEntry)]
    return out


def _presets() -> list[str]:
    out = ["\n## Presets\n\nA preset fills the sections' sizes; the file's values win. "
           "Budgets are for the embedded study on the reference machine (2 CPU cores); the "
           "plan printed before a run estimates the rest.\n",
           "| | " + " | ".join(f"`{p}`" for p in PRESETS) + " |\n|---|" + "---|" * len(PRESETS)]
    budget = ["no budget" if PRESET_BUDGET_S[p] is None
              else f"<= {PRESET_BUDGET_S[p] // 60} min" for p in PRESETS]
    out.append("| budget | " + " | ".join(budget) + " |")
    out.append("| `width` | " + " | ".join(str(PRESET_VALUES[p]["width"]) for p in PRESETS)
               + " |")
    out.append("| `wide_ratio` (the width comparison's TopK) | " + " | ".join(
        str(PRESET_VALUES[p]["wide_ratio"]) for p in PRESETS) + " |")
    for role, what in (("wide", "the wide TopK"), ("jumprelu", "the JumpReLU SAE")):
        out.append(f"| epochs of {what} | " + " | ".join(
            str(PRESET_VALUES[p].get("sae_epochs", {}).get(role) or "(train.epochs)")
            for p in PRESETS) + " |")
    for section in STAGE_CLASSES:
        for k in sorted({k for p in PRESETS for k in PRESET_VALUES[p][section]}):
            vals = [_fmt(PRESET_VALUES[p][section].get(k, "(default)")).strip('"')
                    for p in PRESETS]
            out.append(f"| `{section}.{k}` | " + " | ".join(vals) + " |")
    return out


def _sections() -> list[str]:
    out = []
    for section, cls in STAGE_CLASSES.items():
        docs = _attribute_docs(cls)
        owned = ", ".join(f"`{o}`" for o in OWNED[section])
        out.append(f"\n## `[{section}]`\n\nThe fields of `{cls.__module__}.{cls.__name__}` "
                   f"(the `steerscreen {_COMMAND[section]}` options). The study sets {owned} "
                   "itself.\n\n| field | type | default | meaning |\n|---|---|---|---|")
        # The stage's own fields first, then where it runs (--backend ...).
        fields = sorted(dataclasses.fields(cls), key=lambda f: f.name in ClusterOptions.FIELDS)
        for f in fields:
            if f.name in OWNED[section]:
                continue
            default = _fmt(_default(f))
            if section == "train" and f.name == "lr":
                default = "1e-3 (3e-3 for jumprelu)"
            out.append(f"| `{f.name}` | {_type(f)} | {default} | {docs.get(f.name, '')} |")
    return out


def _configs() -> list[str]:
    out = ["\n## Ready configs (`configs/`)\n\nEach validates offline "
           "(`steerscreen run --config FILE --dry-run`; a test runs them all). What each "
           "needs and costs, from its header:\n\n| config | needs | cost |\n|---|---|---|"]
    for path in sorted(CONFIGS.glob("*.toml")):
        needs, cost = _header(path)
        out.append(f"| [`{path.name}`](../configs/{path.name}) | {needs} | {cost} |")
    return out


_COMMAND = {"train": "train-sae", "stats": "stats", "steer": "steer", "fit": "fit"}


def _header(path: Path) -> tuple[str, str]:
    """The ``# needs:`` and ``# cost:`` paragraphs of a config's comment header."""
    parts: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        text = line[1:].strip()
        for key in ("needs", "cost"):
            if text.startswith(f"{key}:"):
                current = key
                text = text[len(key) + 1:].strip()
                parts[current] = []
        if current and text:
            parts[current].append(text)
    return (" ".join(parts.get("needs", ["-"])).replace("|", "/"),
            " ".join(parts.get("cost", ["-"])).replace("|", "/"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render docs/study.md")
    ap.add_argument("--write", type=Path, help="write here instead of stdout")
    args = ap.parse_args(argv)
    text = markdown()
    if args.write:
        args.write.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
