"""Dead features against training tokens and epochs, on held-out text (issue 19).

One activation pass of the embedded model at one hook (the study's document split: training
and held-out documents never share a document), then one SAE per (tokens, epochs) variant,
trained exactly as ``steerscreen train-sae`` trains it (``fit_sae``), and evaluated on the
held-out residuals (``evaluate_sae``: a feature is dead if it never fires there). It prints the
dead share, explained variance, L0 and the training seconds of each, side by side, so a preset
can pick the cheapest variant that keeps every SAE of the study under 10% dead.

    .venv/bin/python benchmarks/dead_features.py --width 4096 --tokens 30000,60000 --epochs 4,8
    .venv/bin/python benchmarks/dead_features.py --width 8192 --tokens 100000 --batch-size 512,128
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from steerscreen.config import TrainConfig
from steerscreen.corpus import load_corpus
from steerscreen.models import load_model
from steerscreen.pipeline.train import training_contexts
from steerscreen.saes.training import collect_activations, evaluate_sae, fit_sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m")
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--corpus", default="embedded")
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--tokens", default="30000,60000", help="comma list of training tokens")
    ap.add_argument("--epochs", default="4,8", help="comma list of epochs")
    ap.add_argument("--batch-size", default="128", help="comma list of tokens per step")
    ap.add_argument("--heldout-tokens", type=int, default=5000)
    ap.add_argument("--context-len", type=int, default=128)
    args = ap.parse_args()
    tokens = [int(x) for x in args.tokens.split(",")]
    epochs = [int(x) for x in args.epochs.split(",")]
    batches = [int(x) for x in args.batch_size.split(",")]
    torch.manual_seed(0)
    model = load_model(args.model, "cpu", "float32")
    corpus = load_corpus(args.corpus)
    t0 = time.perf_counter()
    split = TrainConfig(model=args.model, hook=args.hook, tokens=max(tokens),
                        heldout_tokens=args.heldout_tokens, context_len=args.context_len)
    acts = {part: collect_activations(model, ctx, [args.hook])[args.hook] for part, ctx in
            zip(("train", "heldout"), training_contexts(split, corpus, model), strict=True)}
    print(f"{args.model} {args.hook}: {len(acts['train']):,} training and "
          f"{len(acts['heldout']):,} held-out positions in {time.perf_counter() - t0:.0f} s")
    print(f"{'arch':<8} {'width':>6} {'tokens':>7} {'epochs':>6} {'batch':>5} {'steps':>6} "
          f"{'dead':>6} {'EV':>6} {'L0':>6} {'train s':>8}")
    for n, ep, bs in itertools.product(tokens, epochs, batches):
        cfg = TrainConfig(model=args.model, hook=args.hook, arch=args.arch,
                          width=args.width, tokens=n, epochs=ep,
                          batch_size=bs, context_len=args.context_len)
        t = time.perf_counter()
        sae = fit_sae(cfg, acts["train"][:n], model.name, args.hook)
        secs = time.perf_counter() - t
        m = evaluate_sae(sae, acts["heldout"])
        print(f"{args.arch:<8} {args.width:>6} {n:>7} {ep:>6} {bs:>5} "
              f"{ep * n // bs:>6} {m['dead_fraction']:>6.1%} "
              f"{m['explained_variance']:>6.3f} {m['mean_l0']:>6.1f} {secs:>8.1f}",
              flush=True)


if __name__ == "__main__":
    main()
