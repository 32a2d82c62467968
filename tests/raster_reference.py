"""A literal, per-pixel transcription of gsplat 1.5.3's 2DGS kernels, in float64 numpy.

Deliberately written the slow way — one Gaussian at a time for the projection, one
pixel and one Gaussian at a time for compositing, with the kernel's own
h_u × h_v construction — so that it shares no code or algebraic shortcut with the
vectorised renderer it checks. The only addition to gsplat is the box rule stated in
instascene.render.surfels: a Gaussian is evaluated at the pixel centres within its
box (3.33 σ, at least the low-pass filter's reach), where gsplat evaluates whole tiles.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA_MAX, ALPHA_MIN, T_STOP = 0.999, 1.0 / 255.0, 1e-4


def _rotmat(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def reference_render(means, quats, scales, opacities, values, viewmat, K, W, H, near=0.01):
    """Returns dict(values [H,W,D], alpha, depth (expected), median, normals [H,W,3],
    pairs: list of (pixel, gaussian, T_before, weight) in compositing order)."""
    R_cw, t_cw = viewmat[:3, :3], viewmat[:3, 3]
    n = len(means)
    proj = []
    for i in range(n):
        mean_c = R_cw @ means[i] + t_cw
        if mean_c[2] <= near:
            proj.append(None)
            continue
        Rg = _rotmat(quats[i])
        WH = np.column_stack([R_cw @ Rg[:, 0] * scales[i, 0], R_cw @ Rg[:, 1] * scales[i, 1], mean_c])
        M = K @ WH
        M0, M1, M2 = M
        tp = np.array([1.0, 1.0, -1.0])
        distance = np.sum(tp * M2 * M2)
        if distance == 0:
            proj.append(None)
            continue
        f = tp / distance
        mean2d = np.array([np.sum(f * M0 * M2), np.sum(f * M1 * M2)])
        half = mean2d**2 - np.array([np.sum(f * M0 * M0), np.sum(f * M1 * M1)])
        radius = np.maximum(np.ceil(3.33 * np.sqrt(np.maximum(1e-4, half))), math.sqrt(math.log(255.0)))
        nw = Rg[:, 2] if np.dot(R_cw @ Rg[:, 2], mean_c) < 0 else -Rg[:, 2]
        proj.append((M, mean2d, radius, mean_c[2], nw))
    order = sorted([i for i in range(n) if proj[i] is not None], key=lambda i: proj[i][3])

    D = values.shape[1]
    out_v = np.zeros((H, W, D))
    alpha_img = np.zeros((H, W))
    depth_img = np.zeros((H, W))
    median = np.zeros((H, W))
    normals = np.zeros((H, W, 3))
    pairs = []
    for py_i in range(H):
        for px_i in range(W):
            px, py = px_i + 0.5, py_i + 0.5
            T = 1.0
            dsum = 0.0
            for i in order:
                M, mean2d, radius, _, nw = proj[i]
                if abs(px - mean2d[0]) > radius[0] or abs(py - mean2d[1]) > radius[1]:
                    continue
                h_u = px * M[2] - M[0]
                h_v = py * M[2] - M[1]
                c = np.cross(h_u, h_v)
                if c[2] == 0:
                    continue
                s = c[:2] / c[2]
                rho3d = s[0] ** 2 + s[1] ** 2
                d = mean2d - np.array([px, py])
                rho2d = 2.0 * (d[0] ** 2 + d[1] ** 2)
                sigma = 0.5 * min(rho3d, rho2d)
                alpha = min(ALPHA_MAX, opacities[i] * math.exp(-sigma))
                if sigma < 0 or alpha < ALPHA_MIN:
                    continue
                next_T = T * (1 - alpha)
                if next_T <= T_STOP:
                    break
                z = (s[0] * M[2, 0] + s[1] * M[2, 1] + M[2, 2]) if rho3d <= rho2d else M[2, 2]
                w = alpha * T
                out_v[py_i, px_i] += w * values[i]
                normals[py_i, px_i] += w * nw
                dsum += w * z
                if T > 0.5:
                    median[py_i, px_i] = z
                pairs.append((py_i * W + px_i, i, T, w))
                T = next_T
            alpha_img[py_i, px_i] = 1 - T
            depth_img[py_i, px_i] = dsum / max(1 - T, 1e-10)
    return dict(values=out_v, alpha=alpha_img, depth=depth_img, median=median, normals=normals, pairs=pairs)
