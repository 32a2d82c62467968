"""The splat container shared by every stage: 2DGS (two scales) or 3DGS (three scales).

Values are stored as the training code keeps them (and as PLY files hold them):
raw quaternions (w, x, y, z; not necessarily unit length), log-scales, logit
opacities and SH coefficients. Activations are methods, so a load/save round trip
is bit-exact. Per-Gaussian properties this project does not know (e.g. InstaScene's
`segfeat_*`) travel in `extra`, in file order, and are written back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InstaSceneError
from .rotations import quat_to_rotmat, rotmat_to_quat

SH_C0 = 0.28209479177387814

# number of f_rest values (3 channels x (K-1) coefficients) -> SH degree
REST_COUNT_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3}


@dataclass
class Splats:
    means: np.ndarray  # [N, 3] float32, world units
    quats: np.ndarray  # [N, 4] float32, (w, x, y, z), raw
    log_scales: np.ndarray  # [N, 2] (2DGS) or [N, 3] (3DGS) float32
    opacity_logits: np.ndarray  # [N] float32
    sh_dc: np.ndarray  # [N, 3] float32, SH band 0 per channel
    sh_rest: np.ndarray  # [N, K-1, 3] float32, bands 1..d, coefficient-major
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N]

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def kind(self) -> str:
        """'2dgs' (surfels, two tangent scales) or '3dgs' (ellipsoids, three scales)."""
        return "2dgs" if self.log_scales.shape[1] == 2 else "3dgs"

    @property
    def sh_degree(self) -> int:
        return int(round(np.sqrt(self.sh_rest.shape[1] + 1))) - 1

    # ------------------------------------------------------------- activations
    def scales(self) -> np.ndarray:
        return np.exp(self.log_scales)

    def opacities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.opacity_logits))

    def unit_quats(self) -> np.ndarray:
        n = np.linalg.norm(self.quats, axis=1, keepdims=True)
        return self.quats / np.maximum(n, 1e-12)

    def normals(self) -> np.ndarray:
        """[N, 3] float64: each Gaussian's local z axis in the world, a surfel's normal
        (of either sign; for 3DGS splats, call to_2dgs first)."""
        return quat_to_rotmat(self.unit_quats().astype(np.float64))[:, :, 2]

    def base_colors(self) -> np.ndarray:
        """View-independent colour (SH band 0) in [0, 1]."""
        return np.clip(0.5 + SH_C0 * self.sh_dc, 0.0, 1.0)

    def sh_coeffs(self) -> np.ndarray:
        """[N, K, 3]: all SH coefficients, band 0 first (the rasterizer's layout)."""
        return np.concatenate([self.sh_dc[:, None, :], self.sh_rest], axis=1)

    # ---------------------------------------------------------------- helpers
    def subset(self, index) -> "Splats":
        """The Gaussians selected by a boolean mask or an index array, same layout."""
        return Splats(
            means=self.means[index],
            quats=self.quats[index],
            log_scales=self.log_scales[index],
            opacity_logits=self.opacity_logits[index],
            sh_dc=self.sh_dc[index],
            sh_rest=self.sh_rest[index],
            extra={k: v[index] for k, v in self.extra.items()},
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            return np.zeros(3), np.zeros(3)
        return self.means.min(axis=0), self.means.max(axis=0)

    def to_2dgs(self) -> "Splats":
        """Flatten 3DGS ellipsoids into surfels: keep the two largest axes as the
        tangent plane and the smallest as the normal. 2DGS input is returned as is.
        """
        if self.kind == "2dgs":
            return self
        q = self.unit_quats().astype(np.float64)
        R = quat_to_rotmat(q)  # columns = local axes
        order = np.argsort(-self.log_scales, axis=1)  # largest first
        R = np.take_along_axis(R, order[:, None, :], axis=2)
        flip = np.linalg.det(R) < 0  # keep a proper rotation
        R[flip, :, 2] *= -1
        log_scales = np.take_along_axis(self.log_scales, order, axis=1)[:, :2]
        return Splats(
            means=self.means,
            quats=rotmat_to_quat(R).astype(np.float32),
            log_scales=np.ascontiguousarray(log_scales, dtype=np.float32),
            opacity_logits=self.opacity_logits,
            sh_dc=self.sh_dc,
            sh_rest=self.sh_rest,
            extra=dict(self.extra),
        )

    def check_finite(self, path=None) -> None:
        """Raise a clear error if any value is NaN or infinite."""
        for name in ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest"):
            a = getattr(self, name)
            bad = ~np.isfinite(a).all(axis=tuple(range(1, a.ndim)))
            if bad.any():
                raise InstaSceneError(
                    f"{int(bad.sum())} Gaussian(s) have NaN or infinite {name} "
                    f"(first at vertex {int(np.argmax(bad))})",
                    path,
                )
        zero_q = np.linalg.norm(self.quats, axis=1) == 0
        if zero_q.any():
            raise InstaSceneError(
                f"{int(zero_q.sum())} Gaussian(s) have an all-zero rotation quaternion "
                f"(first at vertex {int(np.argmax(zero_q))})",
                path,
            )
