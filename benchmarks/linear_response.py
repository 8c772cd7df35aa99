"""The linear response's cost against steering d_model directions, side by side (issue 18).

In one process, on the same linearisation contexts of the embedded model, it times

  (a) forms  = ``linearise``: d_model forward-mode tangents per context through the layers above
      the hook, then two d x D x V products per position (everything the lin_* columns need);
  (b) steer  = ``SteeringEngine.run`` on the same contexts, at the same hook, for
      ``--steer-directions`` random unit directions (clean cache included), scaled to d_model
      directions (a direction's cost is constant: nothing is shared between directions);
  (c) columns for F = 1024 and F = 16384 random decoder rows (``linear_columns``): the only
      part that grows with F.

METHOD v2's budget: (a) + (c) <= (b) for any F. It also reports the peak resident memory
above the loaded model during (a), sampled every 10 ms.

    .venv/bin/python benchmarks/linear_response.py                      # quick preset's 8 x 32
    .venv/bin/python benchmarks/linear_response.py --contexts 16 --context-len 64
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time

import torch

from steerscreen.corpus import DEFAULT_SPLITS, load_corpus, make_contexts, split_documents
from steerscreen.models import load_model
from steerscreen.stats.linear import linear_columns, linearise
from steerscreen.steering.engine import SteeringEngine


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """The largest resident set size seen while the block runs."""

    def __enter__(self) -> PeakRSS:
        self.peak, self.base, self._stop = rss_bytes(), rss_bytes(), False
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m")
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--context-len", type=int, default=32)
    ap.add_argument("--steer-directions", type=int, default=64)
    ap.add_argument("--strength", type=float, default=0.25)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model)
    corpus = load_corpus("embedded")
    split = split_documents(len(corpus.documents), DEFAULT_SPLITS, 0)["stats"]
    ids = make_contexts([corpus.documents[i] for i in split], model.tokenize, model.bos_id,
                        args.context_len, n_contexts=args.contexts).token_ids
    d = model.d_model

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        forms = linearise(model, args.hook, ids)
        t_forms = time.perf_counter() - t0
    cols = {}
    for f in (1024, 16384):
        W = torch.randn(f, d)
        t0 = time.perf_counter()
        top = torch.topk(model.unembed().direct_logits(W / W.norm(dim=1, keepdim=True)), 10,
                         dim=1).indices
        t_top = time.perf_counter() - t0
        t0 = time.perf_counter()
        linear_columns(forms, W, top)
        cols[f] = {"columns_s": time.perf_counter() - t0, "top_tokens_s": t_top}

    engine = SteeringEngine(model, args.hook)
    dirs = torch.randn(args.steer_directions, d)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    x = model.forward(torch.as_tensor(ids), read=[args.hook], logits=False).acts[args.hook]
    alpha = args.strength * float(x[:, 1:].norm(dim=-1).median())
    t0 = time.perf_counter()
    cache = engine.clean(ids)
    for _ in engine.run(cache, dirs, alpha):
        pass
    t_steer = time.perf_counter() - t0
    t_steer_d = t_steer * d / args.steer_directions

    res = {"model": args.model, "hook": args.hook, "contexts": args.contexts,
           "context_len": args.context_len, "d_model": d, "vocab": model.vocab_size,
           "forms_s": t_forms, "columns": cols, "steer_measured_s": t_steer,
           "steer_directions": args.steer_directions, "steer_d_model_s": t_steer_d,
           "peak_rss_above_start_gib": (mem.peak - mem.base) / 2**30,
           "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine()}
    for f, c in cols.items():
        total = t_forms + c["columns_s"]
        res[f"ratio_F{f}"] = total / t_steer_d
        print(f"F = {f:>6}: forms {t_forms:7.1f} s + columns {c['columns_s']:6.2f} s "
              f"(top tokens {c['top_tokens_s']:.2f} s) = {total:7.1f} s; steering d = {d} "
              f"directions {t_steer_d:7.1f} s; ratio {total / t_steer_d:.2f}")
    print(f"peak memory of the forms above the loaded model: "
          f"{res['peak_rss_above_start_gib']:.2f} GiB; {args.contexts} x {args.context_len} "
          f"tokens; steering measured on {args.steer_directions} directions "
          f"({t_steer:.1f} s) and scaled to {d}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
