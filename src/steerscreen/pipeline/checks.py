"""The checks every stage shares, run before it loads anything heavy: a typo fails in a second.

Each stage's own check (``check_stats`` in :mod:`.stats`, ``check_steer`` in :mod:`.steer`,
``check_train`` in :mod:`.train`) uses these helpers and reads only what is cheap (the model's
config.json or GGUF header, the SAE's cfg.json, the run's manifest and stats table, free memory,
the output folder), and raises the same error the full load would raise later, so that an SAE
of the wrong width, a hook past the last layer, an unwritable ``--out`` or a request larger than
memory never costs a model load, and never leaves a run folder behind. What cannot be read
cheaply (a hub model that is not cached) is left to the loaders, which check it again anyway.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerscreen.corpus import max_contexts
from steerscreen.errors import CorpusError, SteerscreenError
from steerscreen.files import user_path
from steerscreen.models.hooks import HookPoint, check_finite

if TYPE_CHECKING:
    from steerscreen.models.hooks import HookedModel

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_writable(path: str | Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be created or written, before any work.

    The nearest existing ancestor must be a folder that accepts a file: permissions alone do not
    tell (root ignores them; a read-only mount does not show in them), so a probe file is
    created there and removed at once."""
    path = user_path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "is itself a file" if probe == path else f"lies under the file {str(probe)!r}"
        raise SteerscreenError(f"cannot write to {flag} {str(path)!r}: it {what}",
                               f"choose a folder path for {flag}")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".steerscreen-probe-"):
            pass
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or -1, str(e))
        where = "" if probe == path else f" (its nearest existing folder {str(probe)!r})"
        raise SteerscreenError(f"cannot write to {flag} {str(path)!r}{where}: {reason}",
                               f"choose a {flag} folder you can write to, or fix its "
                               "permissions") from e


def check_corpus_fits(docs: Sequence[str], context_len: int, n_contexts: int, what: str,
                      request: str) -> None:
    """CorpusError when ``docs`` cannot give ``n_contexts`` contexts whatever the tokenizer."""
    most = max_contexts(docs, context_len)
    if most < n_contexts:
        raise CorpusError(
            f"{what} is too small for {request}: it holds at most {most} contexts of "
            f"{context_len} tokens, and {n_contexts} are needed",
            "lower --tokens or --context-len, or use a larger corpus")


def check_first_batch(model: HookedModel, token_ids: Any, hp: HookPoint) -> None:
    """Run the first batch up to the hook and refuse NaN/Inf activations before any file is
    written (the pass checks every later batch itself)."""
    import torch

    ids = torch.as_tensor(token_ids, device=model.device)
    acts = model.forward(ids, read=[hp], logits=False).acts[hp.name]
    check_finite(acts, hp.name, " in the first batch")


def header_d_sae(sae: Any) -> int:
    return int(getattr(sae, "d_sae", 0) or 0)


def model_bytes(shape: Any, dtype: str) -> dict[str, int]:
    n = getattr(shape, "n_params", None)
    if not isinstance(n, int):  # a loaded model is already in memory: nothing more to find
        return {}
    return {"model weights": n * _DTYPE_BYTES.get(dtype, 4)}


def forward_bytes(shape: Any, batch: int, context_len: int) -> int:
    # The residual, a few temporaries and the logits of one batch (float32).
    return 4 * batch * context_len * (8 * shape.d_model + max(shape.vocab_size, 0))


__all__ = ["check_corpus_fits", "check_first_batch", "check_writable", "forward_bytes",
           "header_d_sae", "model_bytes"]
