#!/usr/bin/env bash
# Issue 2's acceptance run: the three SAE types on SmolLM2 layer 12, 200K WikiText tokens each,
# one command per architecture, timed end to end (activation collection included).
# Usage: benchmarks/train_sae.sh [OUT]   (run from the repo root, ../shared/data beside it)
set -euo pipefail
out="${1:-runs/bench-train-sae}"
corpus="text:../shared/data/wikitext2_raw_test.txt"
export STEERSCREEN_CACHE="${STEERSCREEN_CACHE:-$out/cache}"   # a cold cache: no reuse
for arch in ${ARCHS:-topk relu jumprelu}; do
  start=$(date +%s)
  .venv/bin/steerscreen train-sae --model embedded:smollm2-135m --hook blocks.12.hook_resid_post \
    --arch "$arch" --width 4096 --tokens 200000 --corpus "$corpus" --out "$out/$arch"
  echo "$arch: $(( $(date +%s) - start )) s wall" | tee -a "$out/times.txt"
done
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
for arch in ("topk", "relu", "jumprelu"):
    if not (Path(sys.argv[1]) / arch / "training_summary.json").exists():
        continue
    s = json.loads((Path(sys.argv[1]) / arch / "training_summary.json").read_text())
    print(f"{arch:9s} EV {s['explained_variance']:.3f}  L0 {s['mean_l0']:.1f}  "
          f"dead {s['dead_fraction']:.2%}  collect {s['collect_seconds']:.0f}s  "
          f"train {s['train_seconds']:.0f}s")
PY
