#!/usr/bin/env bash
# Issue 19: the embedded study, one preset after the other (benchmarks/study_timing.sh quick
# default), each from an empty study folder and an empty SAE cache, on a quiet machine. The
# model's GGUF conversion stays cached (linked from the user cache), as a second run finds it.
# Wall clock, CPU time and peak RSS: the /usr/bin/time -v lines at the end of runs/study-PRESET.log.
set -euo pipefail
cd "$(dirname "$0")/.."
user_cache="${XDG_CACHE_HOME:-$HOME/.cache}/steerscreen"
export STEERSCREEN_CACHE="${STEERSCREEN_CACHE_FOR_TIMING:-/tmp/steerscreen-timing-cache}"
for p in "$@"; do
  rm -rf "$STEERSCREEN_CACHE" "runs/study-$p"
  mkdir -p "$STEERSCREEN_CACHE"
  for d in gguf models; do [ -d "$user_cache/$d" ] && ln -s "$user_cache/$d" "$STEERSCREEN_CACHE/$d"; done
  /usr/bin/time -v .venv/bin/steerscreen run --preset "$p" --out "runs/study-$p" \
    > "runs/study-$p.log" 2>&1
  grep -E "Elapsed|User time|Maximum resident" "runs/study-$p.log"
done
