"""A whole tiny pipeline on disk (model folder, SAEs, corpus) and the CLI arguments that run it,
shared by the crash and reproducibility tests."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.reliability.fixtures import make_corpus, make_sae, save_tiny_llama

DOWN_HOOK = "blocks.3.hook_resid_post"


@dataclass(frozen=True)
class Inputs:
    root: Path
    model: str  # local:FOLDER
    sae: Path
    down: Path
    corpus: str  # text:FILE

    def stats_args(self, out: Path, tokens: int = 600, *extra: str) -> list[str]:
        return ["stats", "--sae", str(self.sae), "--model", self.model, "--corpus", self.corpus,
                "--tokens", str(tokens), "--context-len", "16", "--batch-size", "4",
                "--reservoir-size", "5", "--n-examples", "2", "--example-window", "4",
                "--final-norm-contexts", "4", "--n-components", "4", "--out", str(out), *extra]

    def steer_args(self, run: Path, *extra: str) -> list[str]:
        # 14 alive features + 32 random directions on 2 context sets, 2 directions per shard:
        # 46 shards, a few seconds of steering on a tiny model (time to kill it part-way).
        return ["steer", "--run", str(run), "--downstream-sae", str(self.down),
                "--features", "14", "--random-directions", "32", "--contexts", "4",
                "--fresh-contexts", "4", "--context-len", "16", "--strengths", "0.5",
                "--shard-directions", "2", *extra]


def build_inputs(root: Path, n_docs: int = 1000) -> Inputs:
    model_dir = save_tiny_llama(root / "tiny-llama")
    corpus = make_corpus(root / "corpus.txt", n_docs=n_docs)
    return Inputs(root, f"local:{model_dir}", make_sae(root / "sae"),
                  make_sae(root / "down", hook=DOWN_HOOK), f"text:{corpus}")


def kill_when(args: list[str], ready, log: Path, timeout_s: float = 120.0) -> int:
    """Run the CLI with ``args`` in a subprocess and SIGKILL it as soon as ``ready()`` holds;
    -> its return code (-9 when killed; anything else means it finished or failed first)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "steerscreen.cli", *args],
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if ready():
                    proc.kill()
                    break
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return proc.returncode
