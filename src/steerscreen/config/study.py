"""The study config: which model, which SAEs, which downstream SAE, and every stage's settings.

A study compares several SAEs on one model (docs/method.md §5: one run per SAE, the same
downstream SAE S' for all). Its config is a TOML (or YAML) file:

    name = "smollm2-embedded"
    model = "embedded:smollm2-135m"
    corpus = "embedded"

    [[sae]]                 # one table per SAE compared; trained when `spec` is absent
    name = "l12-topk-2048"
    arch = "topk"
    width = 2048
    hook = "blocks.12.hook_resid_post"
    roles = ["architecture", "width"]

    [[sae]]
    name = "res-jb-l6"
    spec = "saelens:gpt2-small-res-jb/blocks.6.hook_resid_pre"

    [downstream]            # S': the same forms as one [[sae]] table
    arch = "topk"
    width = 2048
    hook = "blocks.16.hook_resid_post"

    [train]  [stats]  [steer]  [fit]    # any field of the stage's settings

The sections are the stages' settings (:class:`~.stages.TrainSettings`,
:class:`~.stages.StatsSettings`, :class:`~.stages.SteerSettings`, :class:`~.stages.FitConfig`
but its seed): the study sets the rest (model, corpus, seed, device, SAE and hook) for every
run. A preset (``quick``, ``default``, ``full``) fills the sizes first; the file overrides it.
Unknown or mistyped fields are errors that name the valid ones; every value is checked against
its field's type, and each stage config's own validation runs before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerscreen.config.stages import (
    ARCHS,
    DEFAULT_CORPUS,
    DEFAULT_MODEL,
    FitConfig,
    StatsConfig,
    StatsSettings,
    SteerConfig,
    SteerSettings,
    TrainConfig,
    TrainSettings,
)
from steerscreen.errors import SpecError
from steerscreen.files import path_kind, require_file, user_path
from steerscreen.specs import parse_hook

PRESETS = ("quick", "default", "full")
ROLES = ("architecture", "width")
SECTIONS: dict[str, type] = {"train": TrainSettings, "stats": StatsSettings,
                             "steer": SteerSettings, "fit": FitConfig}
"""A study file's stage sections and the settings class each holds."""
STAGE_CLASSES: dict[str, type] = {"train": TrainConfig, "stats": StatsConfig,
                                  "steer": SteerConfig, "fit": FitConfig}
OWNED: dict[str, tuple[str, ...]] = {
    s: tuple(f.name for f in dataclasses.fields(STAGE_CLASSES[s])
             if f.name not in {g.name for g in dataclasses.fields(SECTIONS[s])}
             or (s == "fit" and f.name == "seed"))
    for s in SECTIONS}
"""Fields the study sets itself in every stage config (never taken from a section)."""

# Sizes per preset for the sections (budgets: quick <= 15 min, default <= 60 min on 2 CPU cores
# for the embedded study; full = the method's defaults, a GPU job). `width` is W of the
# embedded default study: SAEs of width W and `wide_ratio` W; `sae_epochs` gives the wide TopK
# and the JumpReLU SAE their own epochs. The steer sizes come from the design study in
# docs/benchmarks.md#power: at a fixed CPU budget, more features on 4 + 4 contexts of 32 tokens
# detect a smaller delta rho than fewer features measured more precisely.
PRESET_VALUES: dict[str, dict[str, Any]] = {
    "quick": {
        "width": 1024, "wide_ratio": 4,
        # 30K tokens x 4 epochs left the 4096-wide TopK 42% dead on held-out text; 12: 1.5%.
        "sae_epochs": {"wide": 12},
        # ~900 optimiser steps: fewer (batch 1024) left ReLU/JumpReLU far from sparse.
        "train": {"tokens": 30_000, "epochs": 4, "batch_size": 128, "heldout_tokens": 5_000},
        # 4 linearisation contexts, like the 4 steering contexts: 8 took 240 s of 947.
        "stats": {"tokens": 15_000, "final_norm_contexts": 16, "linear_contexts": 4,
                  "linear_len": 32},
        "steer": {"features": 96, "random_directions": 16, "contexts": 4, "fresh_contexts": 4,
                  "context_len": 32, "calibration_contexts": 8, "calibration_directions": 16,
                  "pass_positions": 128},
        "fit": {"n_repeats": 3, "n_permutations": 50},
    },
    "default": {
        # 2W, not 4W: an 8192-wide TopK needs more training than this budget holds to get
        # under 10% dead (docs/benchmarks.md#power).
        "width": 2048, "wide_ratio": 2,
        # JumpReLU's recipe (thresholds only, lr 3e-3) is tuned for ~800 steps: 4 epochs at
        # batch 128 (3,125 steps) left it 52.7% dead; 1 epoch is 781 steps.
        "sae_epochs": {"jumprelu": 1},
        "train": {"tokens": 100_000, "epochs": 4, "batch_size": 128, "heldout_tokens": 10_000},
        "stats": {"tokens": 50_000, "linear_contexts": 8, "linear_len": 32},
        "steer": {"features": 1024, "random_directions": 32, "contexts": 4,
                  "fresh_contexts": 4, "context_len": 32, "pass_positions": 128},
        "fit": {},
    },
    "full": {"width": 4096, "wide_ratio": 4, "train": {}, "stats": {}, "steer": {}, "fit": {}},
}
PRESET_BUDGET_S = {"quick": 15 * 60, "default": 60 * 60, "full": None}


@dataclass
class SAEEntry:
    """One SAE of the study: an existing one (``spec``) or one steerscreen trains."""

    name: str
    """Run name: the run folder is STUDY/runs/NAME (letters, digits, '-', '_', '.')."""
    spec: str | None = None
    """SAE spec (PATH, saelens:RELEASE/SAE_ID, hf:OWNER/REPO[/SUBFOLDER]); None = train one."""
    arch: str = "topk"
    """Trained SAEs: topk, relu or jumprelu."""
    width: int | None = None
    """Trained SAEs: number of features (default: the preset's width)."""
    hook: str | None = None
    """Hook point; required for trained SAEs, optional for specs (default: the SAE's own)."""
    roles: list[str] = field(default_factory=list)
    """Which comparison the SAE belongs to: "architecture" and/or "width"."""
    k: int | None = None
    """Trained TopK SAEs: k (default: the [train] section's)."""
    epochs: int | None = None
    """Trained SAEs: passes over the training tokens (default: the [train] section's). A wide
    TopK needs more optimiser steps before AuxK revives its dead features, and JumpReLU's recipe
    fewer (docs/benchmarks.md#power)."""

    @property
    def trained(self) -> bool:
        return self.spec is None


def _settings(section: str, values: dict[str, Any] | None = None) -> Any:
    """A section's settings object from ``values`` (the fit section's seed is the study's)."""
    values = dict(values or {})
    if section == "fit":
        values.setdefault("seed", 0)
    return SECTIONS[section](**values)


@dataclass
class StudyConfig:
    """A whole study. ``record()`` is what study.json stores and what a rerun is compared to."""

    name: str = "smollm2-embedded"
    """The study's name (report title)."""
    model: str = DEFAULT_MODEL
    """Model spec: embedded:smollm2-135m, embedded:gemma3-270m, hf:REPO, gguf:PATH, a folder."""
    corpus: str = DEFAULT_CORPUS
    """Corpus spec: embedded, text:PATH, jsonl:PATH[:FIELD], hf:DATASET[:CONFIG]:SPLIT[:FIELD]."""
    seed: int = 0
    """One seed for every stage: document splits, SAE training, samples, folds."""
    device: str = "cpu"
    """cpu or cuda."""
    dtype: str = "float32"
    """Model dtype: float32 or bfloat16 (SAEs and statistics always run in float32)."""
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model (transformers' trust_remote_code). Off unless
    set: that code runs with your rights, so read it first."""
    preset: str = "default"
    """quick, default or full: the sizes the sections start from (the CLI's --preset wins)."""
    saes: list[SAEEntry] = field(default_factory=list)
    """[[sae]] tables: the SAEs compared, one run each (default: the embedded study's four)."""
    downstream: SAEEntry | None = None
    """[downstream]: S', the same for every run, at a later hook than all of them."""
    train: TrainSettings = field(default_factory=TrainSettings)
    """[train]: the SAE training settings."""
    stats: StatsSettings = field(default_factory=StatsSettings)
    """[stats]: the stats stage's settings."""
    steer: SteerSettings = field(default_factory=SteerSettings)
    """[steer]: the steer stage's settings."""
    fit: FitConfig = field(default_factory=FitConfig)
    """[fit]: the fit stage's settings (its seed is the study's)."""
    source: str | None = None
    """The config file it was read from (None = the built-in embedded study)."""

    def record(self) -> dict[str, Any]:
        """study.json's config: the top level and, per section, the settings that differ from
        their defaults (so a study recorded before a new setting existed still compares)."""
        d = {f.name: dataclasses.asdict(self)[f.name] for f in dataclasses.fields(self)
             if f.name not in ("source", *SECTIONS)}
        if not d["trust_remote_code"]:  # absent = off: study.json files from before it compare
            d.pop("trust_remote_code")
        for section in SECTIONS:
            d[section] = changed(getattr(self, section), "seed")
        return d

    # -- the stage configs the study runs ------------------------------------------------------
    def _common(self) -> dict[str, Any]:
        return {"seed": self.seed, "device": self.device,
                "trust_remote_code": self.trust_remote_code}

    def train_config(self, entry: SAEEntry) -> TrainConfig:
        extra = {f: getattr(entry, f) for f in ("k", "epochs") if getattr(entry, f) is not None}
        return TrainConfig(**{**dataclasses.asdict(self.train), **extra}, model=self.model,
                           hook=entry.hook or "", arch=entry.arch,  # type: ignore[arg-type]
                           width=int(entry.width or 0), corpus=self.corpus, dtype=self.dtype,
                           **self._common())

    def stats_config(self, sae_path: str, hook: str | None) -> StatsConfig:
        return StatsConfig(**dataclasses.asdict(self.stats), sae=sae_path, model=self.model,
                           hook=hook, corpus=self.corpus, dtype=self.dtype, **self._common())

    def steer_config(self, down_path: str, down_hook: str | None) -> SteerConfig:
        return SteerConfig(**dataclasses.asdict(self.steer), downstream_sae=down_path,
                           downstream_hook=down_hook, **self._common())

    def fit_config(self) -> FitConfig:
        return dataclasses.replace(self.fit, seed=self.seed)

    def resolved(self, section: str) -> dict[str, Any]:
        """Every field of a stage section, defaults filled in."""
        return dataclasses.asdict(getattr(self, section))


def study_terms(section: str, text: str) -> str:
    """``text`` (an error's fix line) with each CLI flag of ``section`` (``--batch-rows``)
    rewritten as the study-file key the user writes (``[steer] batch_rows``)."""
    import re

    keys = {f.metadata.get("flag", f"--{f.name.replace('_', '-')}"): f"[{section}] {f.name}"
            for f in dataclasses.fields(SECTIONS[section])}

    def key(m: re.Match[str]) -> str:
        if m.group(1) not in keys:
            return m.group(0)
        return keys[m.group(1)] + (f" = {m.group(2)}" if m.group(2) else "")

    text = re.sub(r"\bpass (?=--)", "set ", text)
    return re.sub(r"(--[a-z][a-z0-9-]*)(?: (\d[\w.]*))?", key, text)


def changed(obj: Any, *skip: str) -> dict[str, Any]:
    """The fields of a dataclass instance that differ from their defaults."""
    out = {}
    for f in dataclasses.fields(obj):
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())  # type: ignore[misc]
        value = getattr(obj, f.name)
        if f.name not in skip and value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def embedded_saes(width: int, hook: str = "blocks.12.hook_resid_post",
                  down_hook: str = "blocks.16.hook_resid_post", wide_ratio: int = 4,
                  epochs: dict[str, int] | None = None) -> tuple[list[SAEEntry], SAEEntry]:
    """The default study's SAEs: TopK, ReLU and JumpReLU of width W at ``hook`` (architecture),
    TopK at W and ``wide_ratio`` W (width); S' a TopK of width W at ``down_hook``. ``epochs``
    ("wide", "jumprelu"): those SAEs' own passes over the tokens (default the [train]
    section's)."""
    epochs = epochs or {}
    layer = parse_hook(hook)[0]
    saes = [
        SAEEntry(f"l{layer}-topk-{width}", arch="topk", width=width, hook=hook,
                 roles=["architecture", "width"]),
        SAEEntry(f"l{layer}-relu-{width}", arch="relu", width=width, hook=hook,
                 roles=["architecture"]),
        SAEEntry(f"l{layer}-jumprelu-{width}", arch="jumprelu", width=width, hook=hook,
                 roles=["architecture"], epochs=epochs.get("jumprelu")),
        SAEEntry(f"l{layer}-topk-{wide_ratio * width}", arch="topk", width=wide_ratio * width,
                 hook=hook, roles=["width"], epochs=epochs.get("wide")),
    ]
    down = SAEEntry(f"l{parse_hook(down_hook)[0]}-topk-{width}-downstream", arch="topk",
                    width=width, hook=down_hook)
    return saes, down


def load_config(path: str | Path | None, preset: str | None = None) -> StudyConfig:
    """The study from ``path`` (TOML or YAML; None = the built-in embedded study) and a preset
    (the CLI's ``--preset`` wins over the file's ``preset``)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_config_file(path)
    name = preset or raw.get("preset") or "default"
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}", f"use one of {', '.join(PRESETS)}")
    return build_config(raw, name, source=str(path) if path is not None else None)


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = user_path(path)
    kind = path_kind(p)
    if kind == "missing":
        raise SpecError(f"config file not found: {p}", "check the path (ready configs live in "
                        "configs/)")
    require_file(p, "config file", "pass a TOML, YAML or JSON study file (ready configs live in "
                 "configs/)", SpecError)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"config file {p} is not UTF-8 text", "save it as UTF-8 TOML") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except Exception as e:  # the parsers' messages carry line and column
        raise SpecError(f"config file {p} does not parse: {e}",
                        "fix the syntax (TOML: key = value, [section], [[sae]])") from None
    if not isinstance(data, dict):
        raise SpecError(f"config file {p} does not hold a table of settings",
                        "write key = value pairs and [sections]")
    return data


TOP_FIELDS = ("name", "model", "corpus", "seed", "device", "dtype", "trust_remote_code",
              "preset", "width", "sae", "downstream", "train", "stats", "steer", "fit")


def build_config(raw: dict[str, Any], preset: str, source: str | None = None) -> StudyConfig:
    """Validate a parsed config against the preset; every error names the field and the fix."""
    _unknown(raw, TOP_FIELDS, "the config's top level")
    base = PRESET_VALUES[preset]
    cfg = StudyConfig(preset=preset, source=source)
    for key in ("name", "model", "corpus", "device", "dtype"):
        if key in raw:
            setattr(cfg, key, _typed(raw[key], str, key))
    if "seed" in raw:
        cfg.seed = _typed(raw["seed"], int, "seed")
    if "trust_remote_code" in raw:
        cfg.trust_remote_code = _typed(raw["trust_remote_code"], bool, "trust_remote_code")
    width = _typed(raw.get("width", base["width"]), int, "width")
    if cfg.device not in ("cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise SpecError(f"device {cfg.device!r} is not cpu or cuda", "set device = \"cpu\"")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise SpecError(f"dtype {cfg.dtype!r} is not float32 or bfloat16",
                        "set dtype = \"float32\"")
    for section in SECTIONS:
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise SpecError(f"[{section}] must be a table of settings",
                            f"write [{section}] followed by key = value lines")
        setattr(cfg, section, _settings(section, {**base[section], **_section(section, given)}))
    cfg.saes, cfg.downstream = _saes(raw, width, base)
    _check_study(cfg)
    return cfg


def _saes(raw: dict[str, Any], width: int, base: dict[str, Any]
          ) -> tuple[list[SAEEntry], SAEEntry]:
    if "sae" not in raw:
        if "downstream" in raw:
            raise SpecError("a [downstream] table without [[sae]] tables",
                            "list the SAEs to compare as [[sae]] tables")
        # the built-in embedded study, sized by the preset
        return embedded_saes(width, wide_ratio=base["wide_ratio"], epochs=base.get("sae_epochs"))
    tables = raw["sae"]
    if not isinstance(tables, list) or not tables:
        raise SpecError("`sae` must be a list of SAE tables", "write one [[sae]] table per "
                        "SAE you compare")
    saes = [_entry(t, f"[[sae]] #{i + 1}", width) for i, t in enumerate(tables)]
    if "downstream" not in raw:
        raise SpecError("the config lists SAEs but no [downstream] SAE",
                        "add a [downstream] table (S' at a later hook, the same for all "
                        "SAEs): spec = \"...\" or arch/width/hook to train one")
    if not isinstance(raw["downstream"], dict):
        raise SpecError("[downstream] must be a table",
                        "write [downstream] followed by spec = ... or arch/width/hook lines")
    return saes, _entry({"name": "downstream", **raw["downstream"]}, "[downstream]", width)


def _entry(t: Any, where: str, width: int) -> SAEEntry:
    if not isinstance(t, dict):
        raise SpecError(f"{where} must be a table", "write name = ..., spec = ... lines")
    _unknown(t, [f.name for f in dataclasses.fields(SAEEntry)], where)
    if "name" not in t:
        raise SpecError(f"{where} has no name", "add name = \"...\" (its run folder's name)")
    hints = typing.get_type_hints(SAEEntry)
    e = SAEEntry(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in t.items()})
    if not e.name or not all(c.isalnum() or c in "-_." for c in e.name) or e.name[0] == ".":
        raise SpecError(f"{where}: name {e.name!r} is not a folder name",
                        "use letters, digits, '-', '_' and '.'")
    bad_roles = [r for r in e.roles if r not in ROLES]
    if bad_roles:
        raise SpecError(f"{where}: unknown roles {bad_roles}", f"use {' and/or '.join(ROLES)}")
    if e.trained:
        if e.arch not in ARCHS:
            raise SpecError(f"{where}: unknown arch {e.arch!r}", f"use one of {', '.join(ARCHS)}")
        if e.hook is None:
            raise SpecError(f"{where}: a trained SAE needs a hook",
                            "add hook = \"blocks.L.hook_resid_post\", or spec = ... for an "
                            "existing SAE")
        if e.width is None:
            e.width = width
        if e.width < 2:
            raise SpecError(f"{where}: width must be at least 2", "set width = 2048")
    if e.hook is not None:
        parse_hook(e.hook)
    return e


def _check_study(cfg: StudyConfig) -> None:
    names = [e.name for e in cfg.saes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"SAE names {dup} appear more than once",
                        "give every [[sae]] its own name")
    down = cfg.downstream
    assert down is not None
    if down.hook is not None:
        d = _depth(down.hook)
        for e in cfg.saes:
            if e.hook is not None and _depth(e.hook) >= d:
                raise SpecError(f"SAE {e.name!r} at {e.hook} does not lie before the downstream "
                                f"hook {down.hook}", "put S' at a later layer")
    # Build every stage config once: their own checks run now, before anything is loaded.
    for e in [*cfg.saes, down]:
        if e.trained:
            cfg.train_config(e)
    cfg.stats_config("<sae>", None)
    cfg.steer_config("<sae>", None)
    cfg.fit_config()


def _depth(hook: str) -> float:
    layer, kind = parse_hook(hook)
    return layer + {"resid_pre": 0.0, "attn_out": 0.25, "mlp_out": 0.5, "resid_post": 0.75}[kind]


def _section(section: str, given: dict[str, Any]) -> dict[str, Any]:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in OWNED[section]]
    owned = sorted(set(given) & set(OWNED[section]))
    if owned:
        raise SpecError(f"[{section}] sets {owned}, which the study sets itself",
                        "set model/corpus/seed/device/dtype/trust_remote_code at the top level "
                        "and SAEs and hooks in [[sae]] / [downstream]")
    _unknown(given, allowed, f"[{section}]")
    return {k: _typed(v, hints[k], f"{section}.{k}") for k, v in given.items()}


def _unknown(given: dict[str, Any], allowed: Any, where: str) -> None:
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            raise SpecError(
                f"{where}: unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close
                                                      else ""),
                f"valid fields: {', '.join(allowed)} (docs/study.md documents each)")


def _typed(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked (and, for lists, converted) against the field annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _typed(value, a, where)
            except SpecError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise SpecError(f"{where} = {value!r} is not one of {typing.get_args(tp)}",
                        f"set {where.rsplit('.', 1)[-1]} to one of them")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SpecError(f"{where} must be a list, got {value!r}",
                            f"write {where.rsplit('.', 1)[-1]} = [...]")
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_typed(v, inner, where) for v in value]
        return items if origin is list else tuple(items)
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(tp, True)
    if not ok:
        raise SpecError(f"{where} = {value!r} is not {getattr(tp, '__name__', tp)}",
                        f"write a {getattr(tp, '__name__', tp)} value for "
                        f"{where.rsplit('.', 1)[-1]}")
    return float(value) if tp is float else value


__all__ = ["OWNED", "PRESETS", "PRESET_BUDGET_S", "PRESET_VALUES", "ROLES", "SECTIONS",
           "STAGE_CLASSES", "TOP_FIELDS", "SAEEntry", "StudyConfig", "build_config", "changed",
           "embedded_saes", "load_config", "read_config_file", "study_terms"]
