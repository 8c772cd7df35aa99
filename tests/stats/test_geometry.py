"""Tiled decoder cosines equal the dense computation for any tile size, without F x F."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerscreen.stats.geometry import decoder_neighbours


@pytest.mark.parametrize(("F", "block"), [(2, 1), (11, 3), (37, 5), (37, 64)])
def test_tiles_match_dense(F: int, block: int) -> None:
    W = torch.randn(F, 6, generator=torch.Generator().manual_seed(F))
    nb = decoder_neighbours(W * torch.rand(F, 1) * 3, k=10, threshold=0.3, block=block)
    v = (W / W.norm(dim=1, keepdim=True)).double().numpy()
    cos = v @ v.T
    np.fill_diagonal(cos, -np.inf)
    order = np.argsort(-cos, axis=1, kind="stable")[:, : min(10, F - 1)]
    np.testing.assert_allclose(nb.max_cos.numpy(), cos.max(1), atol=1e-6)
    np.testing.assert_allclose(nb.top_mean_cos.numpy(),
                               np.take_along_axis(cos, order, 1).mean(1), atol=1e-6)
    assert nb.n_above.tolist() == (cos > 0.3).sum(1).tolist()
    assert np.array_equal(np.sort(nb.top_idx.numpy(), 1), np.sort(order, 1))


def test_one_feature_is_refused() -> None:
    with pytest.raises(ValueError):
        decoder_neighbours(torch.randn(1, 4))
