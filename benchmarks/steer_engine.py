"""Steering engine vs the loop a researcher would write today, and vs the bare forward cost.

Issue 4's benchmark. In one process, on the same contexts, directions and dose, it times

  (a) engine = ``SteeringEngine``: the clean run of every context once (cached), then every
      (feature, context) row started from the cached residual at the steering hook, batched,
      with every METHOD §3 outcome reduced as it streams;
  (b) bare   = the forward cost the engine cannot avoid: layers above the hook + logits for the
      same steered rows (``start_at`` from the cached residual, same batch size, no metrics);
  (c) loop   = for each feature: a hooked forward of all contexts, clean and steered, through
      the full model, reading the downstream hook, then the same metrics (the same reduction
      functions, so only the structure differs). Timed on ``--loop-features`` features and
      scaled per feature (its cost per feature is constant: nothing is shared across features).

(a) and (b) alternate in ``--rounds`` slices of the features (the clean pass counts in (a)),
so drift in a shared machine's speed falls on both.

Targets (issue 4): (c)/(a) >= 3 on CPU and (a)/(b) <= 1.2. Also reports features/hour and the
peak memory of the engine phase.

    .venv/bin/python benchmarks/steer_engine.py --sae runs/topk --down-sae runs/topk-l16
    .venv/bin/python benchmarks/steer_engine.py --random-model --device cuda   # GPU timings
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from steerscreen.corpus import load_corpus
from steerscreen.saes.io import LoadedSAE, SAEInput, encode, load_sae
from steerscreen.stats.geometry import unit_rows
from steerscreen.steering.engine import SteeringEngine
from steerscreen.steering.outcomes import (
    RowSums,
    clean_terms,
    downstream_sums,
    logit_sums,
    passthrough_response,
    reduce_direction,
    target_set,
)
from steerscreen.steering.sampling import context_sets


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def random_smollm2(device: str):
    """SmolLM2-135M's architecture with random weights (GPU machines without the model file)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from steerscreen.models import HookedModel

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=8192, rope_theta=100000.0,
                      tie_word_embeddings=True, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg).float().to(device).eval()

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [2 + b % 49000 for b in text.encode()]}

    return HookedModel(hf, Tok(), "smollm2-135m-random", bos_id=1)


class RandomTopK(torch.nn.Module):
    """A random TopK SAE with the attributes steerscreen reads (no sae_lens needed, so the GPU
    machine, which lacks it, can run this benchmark)."""

    def __init__(self, d_in: int, width: int, k: int, seed: int) -> None:
        from types import SimpleNamespace

        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, width, generator=g) / d_in**0.5,
                                        requires_grad=False)
        self.W_dec = torch.nn.Parameter(torch.randn(width, d_in, generator=g) / d_in**0.5,
                                        requires_grad=False)
        self.b_enc = torch.nn.Parameter(torch.zeros(width), requires_grad=False)
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in), requires_grad=False)
        self.k = k
        self.cfg = SimpleNamespace(d_in=d_in, d_sae=width, normalize_activations="none",
                                   apply_b_dec_to_input=True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())


def random_topk(hook: str, d_in: int, width: int, device: str, seed: int) -> LoadedSAE:
    sae = RandomTopK(d_in, width, 32, seed).to(device).eval()
    return LoadedSAE(sae=sae, spec="random", path=None, hook_name=hook,  # type: ignore[arg-type]
                     model_name=None, input=SAEInput(), sha256="", architecture="topk")


@torch.no_grad()
def loop(model, hook, down, down_hook, ids_CT, dirs_KD, alpha, tokens_K, batch) -> list:
    """The researcher's loop: per feature, full hooked forwards (clean and steered)."""
    outs = []
    dec_norm = down.sae.W_dec.float().norm(dim=1)
    for k in range(dirs_KD.shape[0]):
        v = dirs_KD[k]
        lp_c, d_c, a_c, lg_s, d_s = [], [], [], [], []
        for i in range(0, ids_CT.shape[0], batch):
            x = ids_CT[i:i + batch]
            clean = model.forward(x, read=[down_hook])
            lp_c.append(torch.log_softmax(clean.logits[:, 1:].float(), -1))
            d_c.append(clean.acts[down_hook][:, 1:].float())

            def add(h, v=v):
                h = h.clone()
                h[:, 1:] += alpha * v.to(h.dtype)
                return h

            st = model.forward(x, read=[down_hook], write={hook: add})
            lg_s.append(st.logits[:, 1:])
            d_s.append(st.acts[down_hook][:, 1:].float())
        logp = torch.cat(lp_c)
        xr = torch.cat(d_c)
        a_c = encode(down, xr)
        P = passthrough_response(lambda z: encode(down, z), xr.flatten(0, 1), a_c.flatten(0, 1),
                                 v[None], alpha, dec_norm)
        tgt = target_set(P)[0]
        c = logp.shape[0]
        ls = logit_sums(torch.cat(lg_s), logp, clean_terms(logp), tokens_K[k].expand(c, -1))
        mask = torch.zeros(c, a_c.shape[-1], dtype=torch.bool, device=a_c.device)
        mask[:, tgt] = True
        ds = downstream_sums(encode(down, torch.cat(d_s)), a_c, dec_norm, mask)
        outs.append(reduce_direction([RowSums.of(ls, ds, a_c.shape[-1])],
                                     tgt.cpu().numpy(), logp.shape[1]))
    return outs


@torch.no_grad()
def bare(model, hook, cache, n_dirs, batch, dev) -> None:
    c = cache.n_contexts
    rows = [(k, ci) for k in range(n_dirs) for ci in range(c)]
    for i0 in range(0, len(rows), batch):
        ctx = torch.tensor([ci for _, ci in rows[i0:i0 + batch]], device=dev)
        model.forward(cache.token_ids_CT[ctx], start_at=(hook, cache.resid_CTD[ctx]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", help="SAE at the steering hook (folder from train-sae)")
    ap.add_argument("--down-sae", help="downstream SAE (folder from train-sae)")
    ap.add_argument("--random-model", action="store_true",
                    help="SmolLM2's architecture with random weights and random TopK SAEs")
    ap.add_argument("--model", default="embedded:smollm2-135m")
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--down-hook", default="blocks.16.hook_resid_post")
    ap.add_argument("--corpus", default="text:../shared/data/wikitext2_raw_test.txt")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--contexts", type=int, default=32)
    ap.add_argument("--context-len", type=int, default=64)
    ap.add_argument("--strength", type=float, default=0.25)
    ap.add_argument("--loop-features", type=int, default=16)
    ap.add_argument("--batch-rows", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=4,
                    help="(a) and (b) alternate over this many slices of the features")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    t = time.perf_counter()
    if args.random_model:
        model = random_smollm2(args.device)
        sae = random_topk(args.hook, 576, 4096, args.device, 1)
        down = random_topk(args.down_hook, 576, 4096, args.device, 2)
        rng = np.random.default_rng(0)
        ids = np.concatenate([np.ones((args.contexts, 1), np.int64), rng.integers(
            2, 49000, (args.contexts, args.context_len - 1))], axis=1)
    else:
        from steerscreen.models import load_model

        model = load_model(args.model, args.device)
        sae = load_sae(args.sae, device=args.device)
        down = load_sae(args.down_sae, device=args.device)
        sets = context_sets(load_corpus(args.corpus), model.tokenize, model.bos_id,
                            context_len=args.context_len, n_steering=args.contexts, n_fresh=0,
                            n_calibration=0, seed=0)
        ids = sets["steering"].token_ids
    load_s = time.perf_counter() - t
    feats = np.random.default_rng(0).choice(sae.d_sae, size=args.features, replace=False)
    dirs = unit_rows(sae.sae.W_dec.detach().float()[torch.as_tensor(feats)]).to(dev)
    engine = SteeringEngine(model, args.hook, down, args.down_hook, batch_rows=args.batch_rows)
    b = engine.batch_rows(args.contexts, args.context_len)
    print(f"model {model.name} on {dev}, hook {args.hook} -> S' at {args.down_hook}; "
          f"{args.features} features x {args.contexts} contexts x {args.context_len} tokens; "
          f"{b} rows per forward; torch threads {torch.get_num_threads()}; loaded in "
          f"{load_s:.1f} s", flush=True)

    # Warm-up (not timed): first-call costs of every path.
    warm = engine.clean(ids[:b] if b < len(ids) else ids)
    list(engine.run(warm, dirs[:1], 1.0))
    r = float(warm.resid_CTD[:, 1:].float().norm(dim=-1).flatten().median())
    alpha = args.strength * r
    rss0 = peak_rss_gib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    # (a) and (b) alternate in rounds over the features, so a slow spell of a shared machine
    # lands on both sides rather than on one.
    sync(dev)
    t = time.perf_counter()
    cache = engine.clean(ids)
    sync(dev)
    t_engine, t_bare, outs = time.perf_counter() - t, 0.0, {}
    per = -(-args.features // max(1, args.rounds))
    for k0 in range(0, args.features, per):
        k1 = min(args.features, k0 + per)
        sync(dev)
        t = time.perf_counter()
        outs |= {k0 + k: o for k, o in engine.run(cache, dirs[k0:k1], alpha)}
        sync(dev)
        t_engine += time.perf_counter() - t
        t = time.perf_counter()
        bare(model, engine.hook, cache, k1 - k0, cache.batch_rows, dev)
        sync(dev)
        t_bare += time.perf_counter() - t
    b = cache.batch_rows
    peak_engine = (torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda"
                   else peak_rss_gib())

    nl = min(args.loop_features, args.features)
    tokens = engine.target_tokens(dirs[:nl]).to(dev)
    ids_t = torch.as_tensor(ids, device=dev)
    sync(dev)
    t = time.perf_counter()
    ref = loop(model, engine.hook.name, down, args.down_hook, ids_t, dirs[:nl], alpha, tokens,
               max(1, min(b, args.contexts)))
    sync(dev)
    t_loop = (time.perf_counter() - t) * args.features / nl
    agree = max(abs(ref[k].values["effect_stability"] - outs[k].values["effect_stability"])
                for k in range(nl))

    rows = args.features * args.contexts
    res = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda"
           else None, "model": model.name, "features": args.features,
           "contexts": args.contexts, "context_len": args.context_len, "rows": rows,
           "rows_per_forward": b, "alpha": alpha, "residual_norm": r,
           "engine_s": t_engine, "bare_s": t_bare, "loop_s_scaled": t_loop,
           "loop_features_timed": nl, "speedup_vs_loop": t_loop / t_engine,
           "engine_over_bare": t_engine / t_bare, "features_per_hour": args.features / t_engine
           * 3600, "rounds": args.rounds,
           "peak_memory_gib": peak_engine, "rss_before_gib": rss0,
           "max_abs_diff_effect_stability_vs_loop": agree,
           "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    print()
    print(f"{'':36s}{'seconds':>10s}{'rows/s':>10s}")
    print(f"{'(a) engine (clean cache + steer)':36s}{t_engine:10.2f}{rows / t_engine:10.1f}")
    print(f"{'(b) bare: layers above h + logits':36s}{t_bare:10.2f}{rows / t_bare:10.1f}")
    print(f"{'(c) loop (scaled from ' + str(nl) + ' features)':36s}{t_loop:10.2f}"
          f"{rows / t_loop:10.1f}")
    print(f"speed-up (c)/(a) = {t_loop / t_engine:.2f} (target >= 3); (a)/(b) = "
          f"{t_engine / t_bare:.3f} (target <= 1.2); {res['features_per_hour']:.0f} "
          f"features/hour ({args.contexts} contexts, one strength); peak memory "
          f"{peak_engine:.2f} GiB; engine vs loop max |d effect_stability| {agree:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
