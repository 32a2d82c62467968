"""The one interface every generator implements (diffusers' pipeline idea: the loop
knows nothing of where the images go next).

A generator receives the object as the observed splats render it on the 16-view ring
(`GenerationTask`) and returns images for the target views (`GeneratedViews`). What it
produces is appearance: the completion pipeline turns these images into colours of
the new Gaussians through the 2DGS fine-tune, and the geometry of the unseen part comes
from the unseen-region grid (the occlusion-aware visual hull), whichever generator ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

# progress(done, total, message) — called between steps; it may raise to cancel.
StepProgress = Callable[[int, int, str], None]


@dataclass
class GenerationTask:
    """The object on its view ring, as the observed Gaussians render it.

    Ring view v looks at the object centre from azimuth `azimuth_deg[v]` (about the
    object's up axis, 0 = aligned to a real camera) and elevation `elevation_deg[v]`,
    at the same distance for every view. Images are on a white background.
    """

    images: np.ndarray  # [V, H, W, 3] float32 in [0, 1]
    alpha: np.ndarray  # [V, H, W] float32, accumulated opacity of the observed object
    depth: np.ndarray  # [V, H, W] float32, camera-z depth of the observed surface (0 = none)
    normals: np.ndarray  # [V, H, W, 3] float32, world normals (unit where alpha > 0)
    known: np.ndarray  # [V, H, W] bool: pixels showing observed surface (not the unseen region)
    unknown: np.ndarray  # [V, H, W] bool: pixels where the ray meets the unseen region first
    completed_alpha: np.ndarray  # [V, H, W] bool: silhouette of the closed object (observed + unseen region)
    completed_depth: np.ndarray  # [V, H, W] float32: camera-z depth of the closed object's surface (0 = none)
    K: np.ndarray  # [3, 3] intrinsics shared by the ring views
    world_to_camera: np.ndarray  # [V, 4, 4] OpenCV poses
    azimuth_deg: np.ndarray  # [V]
    elevation_deg: np.ndarray  # [V]
    conditions: list[int]  # ring views to condition on (best first)
    targets: list[int]  # ring views to generate
    seed: int = 0


@dataclass
class GeneratedViews:
    views: list[int]  # ring indices, the task's targets
    images: np.ndarray  # [T, H, W, 3] float32 in [0, 1], white background
    alpha: np.ndarray | None = None  # [T, H, W] object coverage when the generator knows it


class Generator(Protocol):
    name: str

    def generate(self, task: GenerationTask, progress: StepProgress | None = None) -> GeneratedViews: ...
