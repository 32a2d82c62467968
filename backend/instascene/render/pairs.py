"""Each view's composited pairs kept on disk, so that memory does not grow with views.

The segmentation reads every view's blending weights three times: for the masks'
Gaussian sets (one crossing pair per pixel, tracked as the view is rasterized), for the
label evidence (one pass) and for the feature field (a few thousand sampled pixels of
one or a few views per step). Holding every view's pairs in memory cost ~48 bytes a pair
(int64 indices, a CSR matrix and its transpose): 4.3 GB for 48 views at 640×480. Here
each view is written once — its CSR rows in pixel order and the same pairs in Gaussian
order (int32 index, float32 weight: 16 bytes a pair, ~25 MB for a 256×192 view) — and
read back memory-mapped: a pass touches one view at a time, a feature step the rows of
its sampled pixels and, for the gradient, the Gaussian-ordered pairs filtered to those
pixels (already in order: no sort per step). The resident set stays that of one view
whatever the number of views.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import _SparseRender



@dataclass
class Pairs:
    """One view's pairs: pixel (row-major index), Gaussian, blending weight α·T."""

    width: int
    height: int
    n_gaussians: int
    pixel: torch.Tensor
    gaussian: torch.Tensor
    weight: torch.Tensor


class PairStore:
    """Views' pairs on disk under `folder` (a fresh temporary folder beside the output
    when None is given to `temporary`); a sequence of `Pairs`, plus `render_pixels`."""

    def __init__(self, folder: str | Path, n_gaussians: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n_gaussians = n_gaussians
        self.sizes: list[tuple[int, int]] = []
        self._owned = False

    @classmethod
    def temporary(cls, near: str | Path, n_gaussians: int) -> "PairStore":
        """A store in a new hidden folder next to `near` (on the output's disk, not in a
        RAM-backed /tmp); removed by `close()`."""
        near = Path(near)
        near.parent.mkdir(parents=True, exist_ok=True)
        store = cls(tempfile.mkdtemp(prefix=f".{near.name}.pairs-", dir=near.parent), n_gaussians)
        store._owned = True
        return store

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self.sizes)

    def append(self, c) -> None:
        """Store a view's `Contributions` (pairs sorted by pixel, as rasterization gives them)."""
        i = len(self.sizes)
        n_pix = c.width * c.height
        pixel = c.pixel.cpu().numpy()
        if len(pixel) > 1 and (np.diff(pixel) < 0).any():
            order = np.argsort(pixel, kind="stable")
            pixel, gaussian, weight = pixel[order], c.gaussian.cpu().numpy()[order], c.weight.cpu().numpy()[order]
        else:
            gaussian, weight = c.gaussian.cpu().numpy(), c.weight.cpu().numpy()
        crow = np.zeros(n_pix + 1, np.int64)
        np.cumsum(np.bincount(pixel, minlength=n_pix), out=crow[1:])
        np.save(self.folder / f"{i}.crow.npy", crow)
        np.save(self.folder / f"{i}.col.npy", gaussian.astype(np.int32))
        np.save(self.folder / f"{i}.val.npy", weight.astype(np.float32))
        by_gaussian = np.argsort(gaussian, kind="stable")  # the transpose, for gradients
        np.save(self.folder / f"{i}.tg.npy", gaussian[by_gaussian].astype(np.int32))
        np.save(self.folder / f"{i}.tpix.npy", pixel[by_gaussian].astype(np.int32))
        np.save(self.folder / f"{i}.tval.npy", weight[by_gaussian].astype(np.float32))
        self.sizes.append((c.width, c.height))

    def _arrays(self, i: int, kinds=("crow", "col", "val")):
        return tuple(np.load(self.folder / f"{i}.{k}.npy", mmap_mode="r") for k in kinds)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> Pairs:
        if not 0 <= i < len(self):
            raise IndexError(f"view {i} of {len(self)}")
        crow, col, val = self._arrays(i)
        w, h = self.sizes[i]
        pixel = np.repeat(np.arange(w * h, dtype=np.int64), np.diff(crow))
        return Pairs(w, h, self.n_gaussians, torch.from_numpy(pixel), torch.from_numpy(np.array(col, np.int64)),
                     torch.from_numpy(np.array(val)))

    def render_pixels(self, i: int, features: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
        """Σ w·f at the given pixels of view `i`: [len(pix), D], differentiable in
        `features` (the same numbers as ContributionCache.render at those pixels)."""
        crow, col, val = self._arrays(i)
        p = pix.cpu().numpy()
        start, count = crow[p], crow[p + 1] - crow[p]
        at = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)
        dev = features.device
        g = torch.from_numpy(np.asarray(col[at], np.int64)).to(dev)
        w = torch.from_numpy(np.asarray(val[at], np.float32)).to(dev)
        crow_rows = np.zeros(len(p) + 1, np.int64)
        np.cumsum(count, out=crow_rows[1:])
        # the transpose restricted to the sampled pixels: a filter of the stored
        # Gaussian-ordered pairs, which stay in order (no sort per step)
        tg, tpix, tval = self._arrays(i, ("tg", "tpix", "tval"))
        w_, h_ = self.sizes[i]
        local = np.full(w_ * h_, -1, np.int64)
        local[p] = np.arange(len(p))
        lp = local[tpix]
        keep = lp >= 0
        gk = np.asarray(tg[keep], np.int64)
        crow_t = np.zeros(self.n_gaussians + 1, np.int64)
        np.cumsum(np.bincount(gk, minlength=self.n_gaussians), out=crow_t[1:])
        t = torch.from_numpy
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            A = torch.sparse_csr_tensor(t(crow_rows).to(dev), g, w, (len(p), self.n_gaussians), check_invariants=False)
            At = torch.sparse_csr_tensor(t(crow_t).to(dev), t(lp[keep]).to(dev), t(np.asarray(tval[keep], np.float32)).to(dev),
                                         (self.n_gaussians, len(p)), check_invariants=False)
        return _SparseRender.apply(A, At, features.float().contiguous())
