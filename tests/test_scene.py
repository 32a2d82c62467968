"""Scene loader (every accepted layout, every user mistake), mask label maps, `instascene info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instascene.errors import InstaSceneError
from instascene.io.cameras import Camera, intrinsics, pose_from_rotation_translation, rotation_from_quaternion
from instascene.io.cameras_json import write_cameras_json
from instascene.io.colmap import write_colmap
from instascene.io.masks import read_label_map, write_label_map
from instascene.io.ply import write_ply
from instascene.io.scene import is_training_rescale, load_scene
from instascene.io.splats import Splats

W, H = 32, 24
BACKEND = Path(__file__).resolve().parents[1] / "backend"


# ---------------------------------------------------------------------- builders


def make_splats(n=20, seed=0, segfeat=True) -> Splats:
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    return Splats(
        means=f(n, 3),
        quats=f(n, 4),
        log_scales=f(n, 2),
        opacity_logits=f(n),
        sh_dc=f(n, 3),
        sh_rest=f(n, 3, 3),  # SH degree 1
        extra={f"segfeat_{i}": f(n) for i in range(16)} if segfeat else {},
    )


def make_cameras(names, w=W, h=H, ext=".png") -> list[Camera]:
    rng = np.random.default_rng(1)
    cams = []
    for name in names:
        pose = pose_from_rotation_translation(rotation_from_quaternion(rng.normal(size=4)), rng.normal(size=3))
        K = intrinsics(40.0 * w / W, 40.0 * w / W, w / 2, h / 2)
        cams.append(Camera(name, w, h, K, pose, name + ext))
    return cams


def save_image(path: Path, w=W, h=H, seed=0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def instascene_folder(root: Path, names=("view_b", "view_a", "view_c"), n=20, image_size=(W, H)) -> dict:
    """point_cloud.ply, images/, sparse/0/ (binary), sam/mask/ (8- and 16-bit), gt/."""
    write_ply(root / "point_cloud.ply", make_splats(n))
    write_colmap(root / "sparse" / "0", make_cameras(names))
    images = {name: save_image(root / "images" / f"{name}.png", *image_size, seed=i) for i, name in enumerate(names)}
    iw, ih = image_size
    m8 = np.zeros((ih, iw), np.int32)
    m8[2:10, 3:12] = 5
    m16 = np.zeros((ih, iw), np.int32)
    m16[5:, :7] = 1000
    write_label_map(root / "sam" / "mask" / "view_a.png", m8)
    write_label_map(root / "sam" / "mask" / "view_c.png", m16)
    (root / "gt").mkdir()
    return {"images": images, "masks": {"view_a": m8, "view_c": m16}}


def error_of(path, **kw) -> str:
    with pytest.raises(InstaSceneError) as e:
        load_scene(path, **kw)
    return str(e.value)


# ---------------------------------------------------------------------- masks


def test_label_map_round_trip_8_and_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(7, 9)).astype(np.int64)
    big = rng.integers(0, 65536, size=(7, 9)).astype(np.int32)
    write_label_map(tmp_path / "a.png", small)
    write_label_map(tmp_path / "b.png", big)
    assert Image.open(tmp_path / "a.png").mode == "L"
    assert Image.open(tmp_path / "b.png").mode.startswith("I;16")
    for name, want in (("a.png", small), ("b.png", big)):
        got = read_label_map(tmp_path / name)
        assert got.dtype == np.int32 and got.shape == (7, 9)
        np.testing.assert_array_equal(got, want)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left

    pal = Image.new("P", (4, 3))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    pal.putpixel((1, 2), 3)
    pal.save(tmp_path / "p.png")
    assert read_label_map(tmp_path / "p.png")[2, 1] == 3  # palette index = label

    for bad in (np.array([[-1, 0]]), np.array([[0, 65536]]), np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)) + 0.5):
        with pytest.raises(ValueError):
            write_label_map(tmp_path / "bad.png", bad)
    assert not (tmp_path / "bad.png").exists()


def test_label_map_rejects_colour_and_unreadable_files(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    Image.new("RGBA", (4, 4)).save(tmp_path / "rgba.png")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    for name in ("rgb.png", "rgba.png"):
        with pytest.raises(InstaSceneError, match="single-channel label map") as e:
            read_label_map(tmp_path / name)
        assert name in str(e.value)
    for name in ("junk.png", "missing.png"):
        with pytest.raises(InstaSceneError) as e:
            read_label_map(tmp_path / name)
        assert name in str(e.value)


# ---------------------------------------------------------------------- layouts


def test_instascene_folder_loads(tmp_path):
    made = instascene_folder(tmp_path)
    scene = load_scene(tmp_path)
    assert scene.layout == "instascene" and scene.camera_source == "colmap"
    assert scene.ply_path == tmp_path / "point_cloud.ply"
    assert len(scene.splats) == 20 and scene.splats.kind == "2dgs" and scene.splats.sh_degree == 1
    assert [c.name for c in scene.cameras] == ["view_a", "view_b", "view_c"]
    assert list(scene.image_paths) == ["view_a", "view_b", "view_c"]
    assert list(scene.mask_paths) == ["view_a", "view_c"] and scene.has_gt
    for name, rgb in made["images"].items():
        np.testing.assert_array_equal(scene.image(name), rgb)
    for name, labels in made["masks"].items():
        got = scene.mask(name)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, labels)
    assert scene.mask("view_b") is None
    with pytest.raises(InstaSceneError):
        scene.camera("nope")

    lazy = load_scene(tmp_path, load_splats=False)
    assert lazy.splats is None and len(lazy.require_splats()) == 20


def test_sparse_text_model_directly_in_sparse_and_cameras_json(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_ply(root / "point_cloud.ply", make_splats(5, segfeat=False))
        for i, name in enumerate(("x", "y")):
            save_image(root / "images" / f"{name}.JPG", seed=i)
    write_colmap(a / "sparse", make_cameras(["x", "y"], ext=".JPG"), binary=False)
    write_cameras_json(b / "cameras.json", make_cameras(["y", "x"]))
    sa, sb = load_scene(a), load_scene(b)
    assert sa.camera_source == "colmap" and sa.camera_path == a / "sparse"
    assert sb.camera_source == "cameras.json" and not sb.has_gt
    for s in (sa, sb):
        assert [c.name for c in s.cameras] == ["x", "y"]
        assert s.image("y").shape == (H, W, 3)


def test_training_output_picks_highest_iteration_numerically(tmp_path):
    write_cameras_json(tmp_path / "cameras.json", make_cameras(["v1", "v0"]))
    write_ply(tmp_path / "point_cloud" / "iteration_7000" / "point_cloud.ply", make_splats(7))
    write_ply(tmp_path / "point_cloud" / "iteration_30000" / "point_cloud.ply", make_splats(30))
    (tmp_path / "input.ply").write_bytes(b"ply\n")  # the trainer's seed points: not the splats
    scene = load_scene(tmp_path)
    assert scene.layout == "training" and scene.camera_source == "cameras.json"
    assert scene.ply_path.parent.name == "iteration_30000" and len(scene.splats) == 30
    assert [c.name for c in scene.cameras] == ["v0", "v1"] and scene.image_paths == {}


def test_nerf_synthetic_train_and_test(tmp_path):
    for split in ("train", "test"):
        frames = []
        for i in range(2):
            save_image(tmp_path / split / f"r_{i}.png", seed=i)
            c2w = np.eye(4)
            c2w[2, 3] = 4.0
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    scene = load_scene(tmp_path)
    assert scene.layout == "nerf-synthetic" and scene.splats is None
    assert [c.name for c in scene.cameras] == ["test/r_0", "test/r_1", "train/r_0", "train/r_1"]
    assert scene.image("train/r_1").shape == (H, W, 3)
    with pytest.raises(InstaSceneError, match="no Gaussians"):
        scene.require_splats()


def test_downscaled_images_rescale_the_cameras(tmp_path):
    instascene_folder(tmp_path, image_size=(W // 2, H // 2))  # COLMAP says 32x24, images are 16x12
    scene = load_scene(tmp_path)
    full = make_cameras(["view_b", "view_a", "view_c"])[1]
    cam = scene.camera("view_a")
    assert (cam.width, cam.height) == (W // 2, H // 2)
    np.testing.assert_allclose(cam.K[:2], full.K[:2] / 2)
    np.testing.assert_allclose(cam.world_to_camera, full.world_to_camera, atol=1e-12)
    assert scene.image("view_a").shape == (H // 2, W // 2, 3) and scene.mask("view_a").shape == (H // 2, W // 2)

    assert is_training_rescale((4000, 3000), (1600, 1200))  # 2DGS -r -1
    assert is_training_rescale((1001, 601), (500, 300))  # -r 2 with odd sizes
    assert not is_training_rescale((32, 24), (20, 15)) and not is_training_rescale((32, 24), (32, 12))


# ---------------------------------------------------------------------- mistakes


def test_image_without_camera(tmp_path):
    instascene_folder(tmp_path)
    save_image(tmp_path / "images" / "stray.jpg")
    msg = error_of(tmp_path)
    assert "stray.jpg" in msg and "no camera" in msg


def test_camera_without_image(tmp_path):
    instascene_folder(tmp_path)
    (tmp_path / "images" / "view_b.png").unlink()
    msg = error_of(tmp_path)
    assert "view_b" in msg and "no image" in msg


def test_mask_size_differs_from_image(tmp_path):
    instascene_folder(tmp_path)
    write_label_map(tmp_path / "sam" / "mask" / "view_b.png", np.ones((H, W + 1), np.int32))
    msg = error_of(tmp_path)
    assert "sam/mask/view_b.png" in msg and "images/view_b.png" in msg
    assert f"{W + 1}x{H}" in msg and f"{W}x{H}" in msg


def test_mask_problems(tmp_path):
    instascene_folder(tmp_path)
    Image.new("RGB", (W, H)).save(tmp_path / "sam" / "mask" / "view_b.png")
    msg = error_of(tmp_path)
    assert "view_b.png" in msg and "single-channel" in msg
    (tmp_path / "sam" / "mask" / "view_b.png").unlink()
    write_label_map(tmp_path / "sam" / "mask" / "orphan.png", np.ones((H, W), np.int32))
    msg = error_of(tmp_path)
    assert "orphan.png" in msg and "no camera" in msg


def test_image_size_mismatch_that_is_no_rescale(tmp_path):
    instascene_folder(tmp_path)
    save_image(tmp_path / "images" / "view_c.png", w=W - 3, h=H)
    msg = error_of(tmp_path)
    assert "view_c.png" in msg and f"{W - 3}x{H}" in msg and f"{W}x{H}" in msg


def test_unrecognised_folder_and_missing_path(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "images").mkdir()
    msg = error_of(tmp_path)
    assert "not a scene folder" in msg and "cameras.json" in msg and "sparse/0" in msg and "notes.txt" in msg
    assert "no such file" in error_of(tmp_path / "nowhere")
    assert "iteration_" in error_of(_mkdir(tmp_path / "run" / "point_cloud" / "iteration_10").parents[1])


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


# ---------------------------------------------------------------------- instascene info


def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BACKEND), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "instascene", "info", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_info_command(tmp_path, capsys):
    from instascene.cli import main  # in-process: a CLI start-up costs seconds (torch), one is enough

    instascene_folder(tmp_path / "scene", n=23)
    write_ply(tmp_path / "lone.ply", make_splats(11))

    assert main(["info", str(tmp_path / "lone.ply")]) == 0
    out = capsys.readouterr().out
    assert "gaussians:    11" in out and "2DGS" in out and "segfeat_0..15 (16)" in out

    assert main(["info", str(tmp_path / "scene")]) == 0
    out = capsys.readouterr().out
    assert "gaussians:    23" in out and "2DGS" in out and "3 from COLMAP" in out and "max label 1000" in out

    assert main(["info", str(tmp_path / "scene"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["splats"]["count"] == 23 and d["splats"]["layout"] == "2DGS" and d["splats"]["sh_degree"] == 1
    assert d["cameras"]["count"] == 3 and d["masks"] == {"count": 2, "max_label": 1000} and d["ground_truth"]

    assert main(["info", str(tmp_path)]) == 2  # a folder that is no scene
    err = capsys.readouterr().err
    assert "error" in err and "not a scene folder" in err and len(err.strip().splitlines()) == 1

    r = _cli(tmp_path / "nowhere")  # the real command: exit status 2, one line, no traceback
    assert r.returncode == 2
    assert "error" in r.stderr and "nowhere" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
