"""Why SAE training on Gemma 3 270M's residuals is slower per sample than on SmolLM2's (issue 19).

Side by side in one process, on residuals of both embedded models (the built-in corpus, the
training split, one activation pass each at the study hooks: Gemma layer 6, SmolLM2 layer 12):

- the share of subnormal float32 values in the scaled training inputs;
- SAE training throughput (samples/s) with ``fit_sae`` exactly as ``train-sae`` runs it, for a
  TopK SAE of one width and batch size on both models, with flush-to-zero off (the default) and
  on (``torch.set_flush_denormal(True)``), and with SAELens's dead-feature auxiliary loss (AuxK)
  computed (the default) and skipped.

    .venv/bin/python benchmarks/gemma_training.py --tokens 8000 --width 2560 --epochs 2
"""

from __future__ import annotations

import argparse
import itertools
import time
from unittest import mock

import torch

from steerscreen.config import TrainConfig
from steerscreen.corpus import load_corpus
from steerscreen.models import load_model
from steerscreen.pipeline.train import training_contexts
from steerscreen.saes import training
from steerscreen.saes.training import collect_activations, fit_sae

MODELS = {"embedded:smollm2-135m": "blocks.12.hook_resid_post",
          "embedded:gemma3-270m": "blocks.6.hook_resid_post"}


def residuals(spec: str, hook: str, tokens: int, context_len: int) -> torch.Tensor:
    model = load_model(spec, "cpu", "float32")
    split = TrainConfig(model=spec, hook=hook, tokens=tokens, heldout_tokens=1,
                        context_len=context_len)
    ctx, _ = training_contexts(split, load_corpus("embedded"), model)
    t = time.perf_counter()
    acts = collect_activations(model, ctx, [hook])[hook]
    print(f"{spec}: {len(acts):,} positions at {hook} in {time.perf_counter() - t:.1f} s "
          f"(mean norm {acts.norm(dim=-1).mean():.0f})", flush=True)
    return acts


def subnormal_share(x: torch.Tensor) -> float:
    tiny = torch.finfo(torch.float32).tiny
    return float(((x != 0) & (x.abs() < tiny)).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--width", type=int, default=2560)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--context-len", type=int, default=128)
    args = ap.parse_args()
    acts = {m: residuals(m, h, args.tokens, args.context_len) for m, h in MODELS.items()}
    for m, a in acts.items():
        scaled = a * (a.shape[1] ** 0.5 / a.norm(dim=-1).mean())
        print(f"{m}: subnormal share of the scaled inputs {subnormal_share(scaled):.2e}")
    print(f"{'model':<24} {'flush':>5} {'aux':>4} {'samples/s':>10}")
    rates = {}
    for (m, a), flush, aux in itertools.product(acts.items(), (False, True), (True, False)):
        cfg = TrainConfig(model=m, hook=MODELS[m], arch="topk", width=args.width,
                          tokens=len(a), epochs=args.epochs, batch_size=args.batch_size)
        torch.set_flush_denormal(flush)
        real = training._training_sae

        def no_aux(c, d_in, steps, real=real):  # skip the AuxK computation, not just its weight
            sae = real(c, d_in, steps)
            sae.calculate_topk_aux_loss = lambda *_, **__: torch.zeros(())
            return sae

        t = time.perf_counter()
        with mock.patch.object(training, "_training_sae", real if aux else no_aux):
            fit_sae(cfg, a, m, MODELS[m])
        rate = len(a) * args.epochs / (time.perf_counter() - t)
        rates[m, flush, aux] = rate
        print(f"{m:<24} {flush!s:>5} {aux!s:>4} {rate:>10.0f}", flush=True)
    torch.set_flush_denormal(False)
    s, g = MODELS
    for flush, aux in itertools.product((False, True), (True, False)):
        print(f"flush={flush} aux={aux}: SmolLM2 / Gemma samples/s = "
              f"{rates[s, flush, aux] / rates[g, flush, aux]:.2f}")


if __name__ == "__main__":
    main()
