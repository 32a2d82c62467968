"""The geometric generator (the default; no weights): the unseen part of each target
view takes the colour of the nearest observed pixel of the same view.

The shape of the unseen region is already closed by the occlusion-aware visual hull
(shape.py); this generator only propagates appearance from what the cameras saw, so
it cannot invent texture, a handle or a label on the hidden side — it extends the
surrounding colours. That is its honest limit; the diffusion generator is the way
to plausible new detail.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .generator import GeneratedViews, GenerationTask, StepProgress


class GeometricGenerator:
    name = "geometric"

    def generate(self, task: GenerationTask, progress: StepProgress | None = None) -> GeneratedViews:
        images, alphas = [], []
        for i, v in enumerate(task.targets):
            img = np.ones_like(task.images[v])
            obj = task.completed_alpha[v] | task.known[v]
            if task.known[v].any():
                # index of the nearest known pixel, for every pixel
                _, (iy, ix) = ndimage.distance_transform_edt(~task.known[v], return_indices=True)
                img[obj] = task.images[v][iy[obj], ix[obj]]
            images.append(img)
            alphas.append(obj.astype(np.float32))
            if progress:
                progress(i + 1, len(task.targets), f"view {v}")
        return GeneratedViews(list(task.targets), np.stack(images).astype(np.float32), np.stack(alphas))
