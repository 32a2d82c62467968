"""Shared test helpers: flat 2DGS surfels at given points, facing given normals; points spread on a sphere."""

import numpy as np

from instascene.io.rotations import rotmat_to_quat
from instascene.io.splats import SH_C0, Splats
from instascene.synth.surfels import tangent_frames


def facing_surfels(points: np.ndarray, normals: np.ndarray, sigma: float, opacity_logit: float = 4.0,
                   colors: np.ndarray | None = None) -> Splats:
    """Round surfels (both scales `sigma`) at `points`, local z along `normals` ([N, 3],
    or one [3] for all), colours [N, 3] in 0..1 (mid grey by default)."""
    n = len(points)
    normals = np.broadcast_to(np.asarray(normals, np.float64), (n, 3))
    sh_dc = np.zeros((n, 3)) if colors is None else (colors - 0.5) / SH_C0
    return Splats(means=points.astype(np.float32), quats=rotmat_to_quat(tangent_frames(normals)).astype(np.float32),
                  log_scales=np.full((n, 2), np.log(sigma), np.float32),
                  opacity_logits=np.full(n, opacity_logit, np.float32),
                  sh_dc=sh_dc.astype(np.float32),
                  sh_rest=np.zeros((n, 0, 3), np.float32))


def sphere_directions(n: int) -> np.ndarray:
    """[n, 3] unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
