#!/usr/bin/env bash
# Issue 19's design study, the runs: one stats stage (the TopK-4096 SAE at SmolLM2 layer 12 on
# WikiText, S' = TopK at layer 16: `benchmarks/train_sae.sh runs/bench-tk` and the layer-16 SAE
# of docs/benchmarks.md#steering-engine-issue-4) re-steered at several (N, C, C_fresh, T), one at
# a time, on a quiet machine. Then: .venv/bin/python benchmarks/design_study.py runs/design/*
# Usage (from the repo root, ../shared/data beside it): benchmarks/design_runs.sh
set -euo pipefail
ss=.venv/bin/steerscreen
corpus=text:../shared/data/wikitext2_raw_test.txt
base=runs/acc256lin   # docs/screening.md's 256-feature run: its stats stage is shared
[ -f $base/feature_stats.parquet ] || $ss stats --model embedded:smollm2-135m \
  --sae runs/bench-tk/topk --corpus $corpus --tokens 100000 --linear-len 32 --out $base
one() {  # name N C C_fresh T
  local d=runs/design/$1
  rm -rf "$d"; mkdir -p "$d"
  cp $base/{manifest.json,feature_stats.parquet,feature_examples.parquet} "$d"/
  cp $base/{feature_logit_tokens.parquet,linear_contexts.parquet,linear_forms.safetensors} "$d"/
  cp $base/{feature_dose_stats.parquet,contexts.parquet} "$d"/ 2>/dev/null || true
  $ss steer --run "$d" --force --downstream-sae runs/topk-l16 \
    --downstream-hook blocks.16.hook_resid_post --features "$2" --random-directions 16 \
    --contexts "$3" --fresh-contexts "$4" --context-len "$5" --strengths 0.25
  $ss fit --run "$d" --force
}
one n832-c4-f4-t32 832 4 4 32
one n256-c8-f8-t32 256 8 8 32
one n256-c4-f4-t64 256 4 4 64
one n64-c16-f16-t32 64 16 16 32
