"""Baking an object's world matrix into splats: means, rotations, scales and SH (numpy only).

For a world matrix M = [A | t] (A = 3x3 linear part):

- means' = A·x + t (computed in float64).
- A is split by polar decomposition A = O·P (O orthogonal, P symmetric positive).
  * **Uniform scale** (P = s·I, the common case, and any pure rotation): quaternions
    q' = q(O)·q (Hamilton product, so a raw unnormalised quaternion keeps its norm),
    log-scales += ln s. Exact.
  * **Other scales** (non-uniform or sheared A): each Gaussian's axes R·diag(s) are
    mapped through A and re-orthogonalised with an SVD (2DGS: the two tangent axes,
    an exact ellipse; 3DGS: the covariance A·Σ·Aᵀ, exact). Quaternions are rebuilt
    from the new axes with the raw quaternion's norm kept.
  * A mirroring matrix (det A < 0) is handled: the frame is made right-handed again
    by flipping the normal axis (a surfel/ellipsoid is symmetric about it).
- **SH**: view-dependent colour must satisfy c'(d) = c(Oᵀ·d). Every SH band l is
  invariant under orthogonal maps, so band l's coefficients transform by one
  (2l+1)x(2l+1) matrix D_l(O). D_l is obtained *exactly* (to float64 round-off,
  ~1e-15) for **every degree 1..3** by evaluating the 3DGS real SH basis at 64 fixed
  directions d and at Oᵀ·d and solving the linear system Y(Oᵀd) = Y(d)·D_lᵀ (a
  least-squares solve of an exactly consistent system — not an approximation).
  Reflections are covered the same way. With non-uniform scale the view direction
  mapping is not orthogonal; the SH are then rotated by O alone (the polar
  rotation), which is the closest rotation but not exact for sheared views.
- Opacity, DC colour and extras are unchanged.
"""

from __future__ import annotations

import numpy as np

from .ply import SplatData

C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)  # fmt: skip


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """[M, (degree+1)^2 - 1] real SH basis of bands 1..degree, as the 3DGS/2DGS rasterizers
    evaluate it (coefficient k multiplies column k-1; band 0 is omitted)."""
    d = np.asarray(dirs, np.float64)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    cols = []
    if degree >= 1:
        cols += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z, C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [C3[0] * y * (3 * xx - yy), C3[1] * x * y * z, C3[2] * y * (4 * zz - xx - yy),
                 C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy),
                 C3[5] * z * (xx - yy), C3[6] * x * (xx - 3 * yy)]
    return np.stack(cols, axis=1) if cols else np.zeros((len(d), 0))


def sh_eval(sh_dc: np.ndarray, sh_rest: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Colour before the +0.5 offset and clamping: [N, 3] for one direction per splat."""
    deg = int(round(np.sqrt(sh_rest.shape[1] + 1))) - 1
    basis = sh_basis(dirs, deg)  # [N, K-1]
    return 0.28209479177387814 * np.asarray(sh_dc, np.float64) + \
        np.einsum("nk,nkc->nc", basis, np.asarray(sh_rest, np.float64))


def _fibonacci(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


def sh_rotation_matrices(O: np.ndarray, degree: int) -> list[np.ndarray]:
    """[D_1, ..., D_degree]: band l's coefficients c (length 2l+1) become D_l @ c under the
    orthogonal map O (view directions d -> O d)."""
    O = np.asarray(O, np.float64)
    dirs = _fibonacci(64)
    out, start = [], 0
    full_a = sh_basis(dirs, degree)  # Y(d)
    full_b = sh_basis(dirs @ O, degree)  # Y(O^T d): rows are (O^T d_i)^T = d_i^T O
    for l in range(1, degree + 1):
        n = 2 * l + 1
        A, B = full_a[:, start:start + n], full_b[:, start:start + n]
        # want c' with Y(d)·c' = Y(O^T d)·c for all d  =>  c' = lstsq(A, B) @ c
        D, *_ = np.linalg.lstsq(A, B, rcond=None)
        out.append(D)
        start += n
    return out


def rotate_sh(sh_rest: np.ndarray, O: np.ndarray) -> np.ndarray:
    """[N, K-1, 3] SH bands 1..d rotated by the orthogonal matrix O (float32 out)."""
    k1 = sh_rest.shape[1]
    if k1 == 0:
        return sh_rest
    deg = int(round(np.sqrt(k1 + 1))) - 1
    out = np.empty_like(sh_rest, dtype=np.float32)
    start = 0
    for l, D in enumerate(sh_rotation_matrices(O, deg), 1):
        n = 2 * l + 1
        out[:, start:start + n] = np.einsum("ij,njc->nic", D, sh_rest[:, start:start + n].astype(np.float64))
        start += n
    return out


# ------------------------------------------------------------------ quaternions
def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a·b for (w, x, y, z) arrays that broadcast."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)  # fmt: skip


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """[N, 3, 3] rotations (columns = local axes) of [N, 4] quaternions, normalised first."""
    q = np.asarray(q, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)  # fmt: skip


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """[N, 4] unit quaternions (w >= 0) of proper rotations [N, 3, 3] (Shepperd's method)."""
    R = np.asarray(R, np.float64)
    m00, m11, m22 = R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]
    tr = m00 + m11 + m22
    cand = np.stack([
        np.stack([1 + tr, R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], -1),
        np.stack([R[:, 2, 1] - R[:, 1, 2], 1 + m00 - m11 - m22, R[:, 0, 1] + R[:, 1, 0], R[:, 0, 2] + R[:, 2, 0]], -1),
        np.stack([R[:, 0, 2] - R[:, 2, 0], R[:, 0, 1] + R[:, 1, 0], 1 - m00 + m11 - m22, R[:, 1, 2] + R[:, 2, 1]], -1),
        np.stack([R[:, 1, 0] - R[:, 0, 1], R[:, 0, 2] + R[:, 2, 0], R[:, 1, 2] + R[:, 2, 1], 1 - m00 - m11 + m22], -1),
    ], 1)  # [N, 4 candidates, 4]
    pick = np.argmax(np.stack([tr, m00, m11, m22], -1), axis=1)
    q = cand[np.arange(len(R)), pick]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def polar(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A = O·P with O orthogonal (det ±1) and P symmetric positive semi-definite."""
    U, S, Vt = np.linalg.svd(np.asarray(A, np.float64))
    return U @ Vt, Vt.T @ np.diag(S) @ Vt


# ------------------------------------------------------------------ baking
def bake_matrix(data: SplatData, matrix) -> SplatData:
    """The splats as seen through `matrix` (4x4 world matrix); see the module docstring."""
    M = np.asarray(matrix, np.float64)
    A, t = M[:3, :3], M[:3, 3]
    n = len(data)
    if np.allclose(M, np.eye(4), rtol=0, atol=0):
        return data
    means = (data.means.astype(np.float64) @ A.T + t).astype(np.float32)
    O, P = polar(A)
    s = float(np.cbrt(abs(np.linalg.det(A)))) if n else 1.0
    uniform = np.allclose(P, s * np.eye(3), rtol=1e-6, atol=1e-9 * max(s, 1e-30))
    proper = np.linalg.det(O) > 0
    quats, log_scales = data.quats, data.log_scales
    if n and uniform and proper:
        qO = matrix_to_quat(O[None])[0]
        quats = quat_multiply(qO, data.quats).astype(np.float32)
        log_scales = (data.log_scales.astype(np.float64) + np.log(s)).astype(np.float32)
    elif n:
        quats, log_scales = _bake_general(data, A)
    return SplatData(
        means=means, quats=quats, log_scales=log_scales, opacity_logits=data.opacity_logits,
        sh_dc=data.sh_dc, sh_rest=rotate_sh(data.sh_rest, O) if data.sh_rest.shape[1] else data.sh_rest,
        extra=data.extra,
    )


def _bake_general(data: SplatData, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(data.quats.astype(np.float64), axis=1)
    R = quat_to_matrix(data.quats)  # [N, 3, 3]
    sc = np.exp(data.log_scales.astype(np.float64))
    if data.log_scales.shape[1] == 2:  # surfel: image of the two tangent axes
        T = np.einsum("ij,njk->nik", A, R[:, :, :2] * sc[:, None, :])  # [N, 3, 2]
        U, S, _ = np.linalg.svd(T, full_matrices=False)  # U [N, 3, 2], S [N, 2]
        n3 = np.cross(U[:, :, 0], U[:, :, 1])
        axes = np.concatenate([U, n3[:, :, None]], axis=2)
        new_log = np.log(np.maximum(S, 1e-30))
    else:  # ellipsoid: covariance A R S^2 R^T A^T
        L = np.einsum("ij,njk->nik", A, R * sc[:, None, :])
        cov = L @ np.transpose(L, (0, 2, 1))
        w, V = np.linalg.eigh(cov)  # ascending
        axes = V[:, :, ::-1].copy()
        new_log = 0.5 * np.log(np.maximum(w[:, ::-1], 1e-60))
        flip = np.linalg.det(axes) < 0
        axes[flip, :, 2] *= -1
    q = matrix_to_quat(axes) * norm[:, None]
    return q.astype(np.float32), new_log.astype(np.float32)
