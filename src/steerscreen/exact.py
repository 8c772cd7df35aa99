"""Reductions whose bits do not depend on torch's thread count.

A Ray task runs torch on the CPUs it reserved (often one thread); a local run uses every core.
Most kernels split their work among threads by output element, so each output is computed the
same way whatever the count. Two kinds do not, and their last bits then differ between a local
and a Ray run of the same shard:

- a reduction of more than 32,768 elements to a single number (torch splits the input among
  threads and adds the partial sums): :func:`total` sums fixed blocks instead;
- a matrix product with a long inner dimension and a small output (a C x C Gram matrix over a
  vocabulary): BLAS may split the inner dimension among threads. :func:`matmul` runs it on one
  thread on the CPU (a few ms per call at the sizes used here).

On a GPU neither changes anything: the kernels there do not depend on a thread count.
"""

from __future__ import annotations

import torch

_BLOCK = 8192


def total(x: torch.Tensor) -> torch.Tensor:
    """``x.sum()``: blocks of 8,192 each summed whole by one thread, then their few sums
    serially (padding adds exact zeros)."""
    x = x.reshape(-1)
    if x.numel() <= _BLOCK:
        return x.sum()
    x = torch.nn.functional.pad(x, (0, -x.numel() % _BLOCK))
    return x.view(-1, _BLOCK).sum(1).sum()


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``, on one CPU thread (GPU tensors as they are)."""
    n = torch.get_num_threads()
    if a.device.type != "cpu" or n == 1:
        return a @ b
    torch.set_num_threads(1)
    try:
        return a @ b
    finally:
        torch.set_num_threads(n)


__all__ = ["matmul", "total"]
