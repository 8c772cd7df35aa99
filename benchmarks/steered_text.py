"""What the report's steered text costs: greedy continuations (3 prompts x 24 tokens, clean, at
the dose and at 2x) of each run's card features, regenerated on a copy of a finished study.

    .venv/bin/python benchmarks/steered_text.py STUDY

Loads the study's model once (as the study does), then per run times ``run_generations`` for the
features the cards show (``card_features``). Prints seconds, features and generated tokens.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from steerscreen.layout import STEERED_TEXT
from steerscreen.models import load_model
from steerscreen.pipeline.generate import card_features, run_generations


def main(study: Path) -> None:
    rec = json.loads((study / "study.json").read_text())
    model = load_model(rec["config"]["model"])
    with tempfile.TemporaryDirectory() as tmp:
        for r in rec["runs"]:
            run = Path(tmp) / r["name"]
            shutil.copytree(study / r["path"], run,
                            ignore=shutil.ignore_patterns(STEERED_TEXT, "figures", "*.html"))
            manifest = json.loads((run / "manifest.json").read_text())
            manifest.pop("generation", None)  # as if never generated
            (run / "manifest.json").write_text(json.dumps(manifest))
            t = time.perf_counter()
            res = run_generations(run, card_features(run), model=model)
            print(f"{r['name']}: {len(res.generated)} features, {res.tokens} tokens, "
                  f"{res.seconds:.2f} s generating, {time.perf_counter() - t:.2f} s in all")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
