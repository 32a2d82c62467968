"""The add-on's numpy code gives the same results under numpy 2 (Blender 5.1 bundles
numpy 2; the bpy 5.0.1 used by the other tests pins numpy<2).

The io layer (splat and mesh PLY, COLMAP and cameras.json, run folders, matrix baking
with SH rotation) imports without Blender, so one script runs it here under numpy 1
and, in `make setup`'s numpy-2 interpreter (.venv/numpy2), under numpy 2; every output
array must match. The bpy layer itself cannot run outside Blender 5.1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_addon_io import DONUT, make_run, make_scene

ROOT = Path(__file__).resolve().parents[1]
NUMPY2 = ROOT / ".venv" / "numpy2" / "bin" / "python"

_EXERCISE = """
import sys, json, numpy as np
sys.path.insert(0, sys.argv[1])
from instascene_blender.io.cameras import blender_camera, find_scene
from instascene_blender.io.mesh_ply import read_mesh_ply, write_mesh_ply
from instascene_blender.io.ply import concatenate, read_splat_ply, write_splat_ply
from instascene_blender.io.run_folder import instance_centroid, read_labels, read_run_folder
from instascene_blender.io.transform import bake_matrix
scene, run, donut, out = sys.argv[2:6]
res = {"numpy": np.__version__}
paths = find_scene(scene)
s = read_splat_ply(paths.ply)
cams = paths.cameras
A = np.array([[0.0, -2.0, 0.0, 0.3], [1.5, 0.0, 0.0, -0.2], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 1.0]])
b = bake_matrix(s, A)
d = read_splat_ply(donut)
rf = read_run_folder(run)
parts = [read_splat_ply(r.splat_file) for r in rf.instances]
m = read_mesh_ply(next(r.files["mesh"] for r in rf.instances if "mesh" in r.files))
write_splat_ply(out + "/baked.ply", concatenate([b, *parts]))
write_mesh_ply(out + "/mesh.ply", m)
again, m2 = read_splat_ply(out + "/baked.ply"), read_mesh_ply(out + "/mesh.ply")
for k in ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest"):
    res["baked_" + k] = getattr(b, k).tolist()
    res["again_" + k] = getattr(again, k).tolist()
res["donut_means"] = d.means[::97].tolist()
res["donut_colors"] = d.base_colors()[::97].tolist()
res["cams"] = [c.world_to_camera.tolist() for c in cams]
res["blender_cams"] = [np.asarray(blender_camera(c).matrix_world).tolist() for c in cams]
res["project"] = cams[0].project(s.means[:20]).tolist()
res["centroids"] = [instance_centroid(r).tolist() for r in rf.instances]
res["labels"] = read_labels(rf.labels).tolist()
res["mesh"] = [m2.vertices.tolist(), m2.faces.tolist(), None if m2.colors is None else m2.colors.tolist()]
print(json.dumps(res))
"""


def _run(python, tmp: Path, scene: Path, run: Path, tag: str) -> dict:
    out = tmp / tag
    out.mkdir()
    r = subprocess.run([str(python), "-c", _EXERCISE, str(ROOT), str(scene), str(run), str(DONUT), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not NUMPY2.exists(), reason="no numpy-2 interpreter: `make setup` creates .venv/numpy2")
def test_addon_io_same_under_numpy2(tmp_path):
    scene, _, _ = make_scene(tmp_path / "scene", n=200, cameras="colmap")
    run = make_run(tmp_path / "run")
    one = _run(sys.executable, tmp_path, scene, run, "np1")
    two = _run(NUMPY2, tmp_path, scene, run, "np2")
    assert one.pop("numpy").startswith("1.") and two.pop("numpy").startswith("2.")
    assert one.keys() == two.keys()
    for k in one:
        a, b = one[k], two[k]
        if k == "mesh":
            assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0]) and (a[2] is None) == (b[2] is None)
            continue
        assert np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-7), k
