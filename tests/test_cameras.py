"""Camera readers/writers: COLMAP (bin + txt), cameras.json, NeRF-synthetic transforms.json."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from instascene.errors import InstaSceneError
from instascene.io.cameras import (
    Camera,
    intrinsics,
    pose_from_rotation_translation,
    quaternion_from_rotation,
    rotation_from_quaternion,
)
from instascene.io.cameras_json import read_cameras_json, write_cameras_json
from instascene.io.colmap import read_colmap, read_points3d, write_colmap
from instascene.io.nerf_synthetic import read_transforms_json


def random_rotation(rng) -> np.ndarray:
    return rotation_from_quaternion(rng.normal(size=4))


def random_cameras(rng, n=5) -> list[Camera]:
    Ks = [intrinsics(500.25, 510.5, 320.0, 239.5), intrinsics(800.0, 800.0, 400.125, 300.0)]
    cams = []
    for i in range(n):
        pose = pose_from_rotation_translation(random_rotation(rng), rng.normal(size=3) * 3)
        w, h = (640, 480) if i % 2 == 0 else (800, 600)
        cams.append(Camera(f"img_{i:03d}", w, h, Ks[i % 2], pose, f"img_{i:03d}.jpg"))
    return cams


def look_at_origin(position) -> np.ndarray:
    """OpenCV world-to-camera for a camera at `position` looking at the origin."""
    z = -np.asarray(position, dtype=np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world
    return pose_from_rotation_translation(R, -R @ position)


def project(cam: Camera, X) -> np.ndarray:
    p = cam.K @ (cam.world_to_camera[:3, :3] @ X + cam.world_to_camera[:3, 3])
    return p[:2] / p[2]


def assert_same_cameras(a: list[Camera], b: list[Camera], tol=1e-12):
    assert [c.name for c in a] == [c.name for c in b]
    for ca, cb in zip(a, b):
        assert (ca.width, ca.height) == (cb.width, cb.height)
        np.testing.assert_array_equal(ca.K, cb.K)
        np.testing.assert_allclose(ca.world_to_camera, cb.world_to_camera, rtol=0, atol=tol)


# --------------------------------------------------------------------- quaternions


def test_quaternion_round_trip_and_convention():
    rng = np.random.default_rng(0)
    for _ in range(200):
        R = random_rotation(rng)
        q = quaternion_from_rotation(R)
        assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-15
        np.testing.assert_allclose(rotation_from_quaternion(q), R, atol=1e-14)
    # Hamilton, scalar first: (cos 45°, 0, 0, sin 45°) turns x onto y about +z.
    Rz = rotation_from_quaternion([np.sqrt(0.5), 0, 0, np.sqrt(0.5)])
    np.testing.assert_allclose(Rz @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    # 180° turns (w = 0) take the other branches of Shepperd's method.
    for R in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
        np.testing.assert_allclose(rotation_from_quaternion(quaternion_from_rotation(R)), R, atol=1e-15)


# --------------------------------------------------------------------- COLMAP


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_write_read_round_trip(tmp_path, binary):
    rng = np.random.default_rng(1)
    cams = random_cameras(rng)
    write_colmap(tmp_path, cams[::-1], binary=binary)  # written out of order
    ext = ".bin" if binary else ".txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{s}{ext}" for s in ("cameras", "images", "points3D")]
    back = read_colmap(tmp_path)
    assert_same_cameras(back, cams)  # sorted by image name on reading
    assert [c.image_name for c in back] == [c.image_name for c in cams]
    if binary:  # two distinct intrinsics -> two COLMAP cameras
        assert struct.unpack("<Q", (tmp_path / "cameras.bin").read_bytes()[:8]) == (2,)


def test_colmap_text_by_hand_pinhole_and_simple_pinhole(tmp_path):
    rng = np.random.default_rng(2)
    qs = [q / np.linalg.norm(q) for q in rng.normal(size=(3, 4))]
    ts = rng.normal(size=(3, 3))
    (tmp_path / "cameras.txt").write_text(
        "# Camera list with one line of data per camera:\n"
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        "1 PINHOLE 640 480 500.5 501.25 320.5 240.75\n"
        "2 SIMPLE_PINHOLE 1024 768 900.125 512 384.5\n"
    )
    lines = ["# Image list with two lines of data per image:"]
    for i, (q, t, cid, name) in enumerate(zip(qs, ts, (2, 1, 2), ("c.png", "a.png", "sub/b.png"))):
        lines.append(f"{i + 1} {' '.join(map(repr, q))} {' '.join(map(repr, t))} {cid} {name}")
        lines.append("10.5 20.5 -1 30.0 40.0 7" if i == 1 else "")
    (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")

    cams = read_colmap(tmp_path)
    assert [c.name for c in cams] == ["a", "b", "c"]
    assert [c.image_name for c in cams] == ["a.png", "sub/b.png", "c.png"]
    a, b, c = cams
    np.testing.assert_array_equal(a.K, intrinsics(500.5, 501.25, 320.5, 240.75))
    np.testing.assert_array_equal(b.K, intrinsics(900.125, 900.125, 512.0, 384.5))
    assert (a.width, a.height, b.width, b.height) == (640, 480, 1024, 768)
    for cam, i in zip(cams, (1, 2, 0)):
        np.testing.assert_allclose(cam.world_to_camera[:3, :3], rotation_from_quaternion(qs[i]), atol=1e-15)
        np.testing.assert_array_equal(cam.world_to_camera[:3, 3], ts[i])

    # the same model written as binary reads back identically
    write_colmap(tmp_path / "bin", cams)
    assert_same_cameras(read_colmap(tmp_path / "bin"), cams)


def test_colmap_simple_pinhole_empty_second_line_and_centre(tmp_path):
    # A camera at C = (0, 0, -5) looking along +z with identity rotation: t = -R C = (0, 0, 5).
    # Image 2 is turned 90° about +z (q = (cos45°, 0, 0, sin45°)), centred at (1, 2, 3).
    s = np.sqrt(0.5)
    R2 = rotation_from_quaternion([s, 0, 0, s])
    t2 = -R2 @ [1.0, 2.0, 3.0]
    (tmp_path / "cameras.txt").write_text("1 SIMPLE_PINHOLE 100 80 120 50 40\n")
    (tmp_path / "images.txt").write_text(
        "# comment\n"
        "1 1 0 0 0 0 0 5 1 one.jpg\n"
        "\n"
        f"2 {s!r} 0 0 {s!r} {t2[0]!r} {t2[1]!r} {t2[2]!r} 1 two.jpg\n"  # last second line absent
    )
    one, two = read_colmap(tmp_path)
    assert (one.name, two.name) == ("one", "two")
    np.testing.assert_array_equal(one.K, intrinsics(120, 120, 50, 40))
    np.testing.assert_allclose(one.center, [0, 0, -5], atol=1e-15)
    np.testing.assert_allclose(two.center, [1, 2, 3], atol=1e-14)
    np.testing.assert_allclose(two.world_to_camera[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    # the world origin lies straight ahead of camera one: it projects to the principal point
    np.testing.assert_allclose(project(one, np.zeros(3)), [50, 40], atol=1e-12)


def _write_cameras_bin(path, model_id, params, camera_id=1):
    data = struct.pack("<Q", 1) + struct.pack("<iiQQ", camera_id, model_id, 640, 480)
    path.write_bytes(data + struct.pack(f"<{len(params)}d", *params))


def test_colmap_distorted_model_is_rejected(tmp_path):
    write_colmap(tmp_path, random_cameras(np.random.default_rng(3), 1))
    _write_cameras_bin(tmp_path / "cameras.bin", 4, [500, 500, 320, 240, 0.1, 0.01, 0, 0], camera_id=1)
    with pytest.raises(InstaSceneError) as e:
        read_colmap(tmp_path)
    msg = str(e.value)
    assert "OPENCV" in msg and "undistort" in msg and "cameras.bin" in msg and "camera 1" in msg

    txt = tmp_path / "txt"
    txt.mkdir()
    (txt / "cameras.txt").write_text("3 SIMPLE_RADIAL 640 480 500 320 240 0.1\n")
    (txt / "images.txt").write_text("")
    with pytest.raises(InstaSceneError, match=r"SIMPLE_RADIAL.*undistort") as e:
        read_colmap(txt)
    assert "camera 3" in str(e.value) and "line 1" in str(e.value)


def test_colmap_unknown_model(tmp_path):
    write_colmap(tmp_path, random_cameras(np.random.default_rng(4), 1))
    _write_cameras_bin(tmp_path / "cameras.bin", 42, [1.0])
    with pytest.raises(InstaSceneError, match="unknown camera model id 42"):
        read_colmap(tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "cameras.txt").write_text("1 FANCY 640 480 1 2 3\n")
    (tmp_path / "t" / "images.txt").write_text("")
    with pytest.raises(InstaSceneError, match="unknown camera model 'FANCY'"):
        read_colmap(tmp_path / "t")


def test_colmap_truncated_binary(tmp_path):
    write_colmap(tmp_path, random_cameras(np.random.default_rng(5), 3))
    for name in ("cameras.bin", "images.bin"):
        good = (tmp_path / name).read_bytes()
        for cut in (4, len(good) - 3):
            (tmp_path / name).write_bytes(good[:cut])
            with pytest.raises(InstaSceneError, match="truncated") as e:
                read_colmap(tmp_path)
            assert name in str(e.value)
        (tmp_path / name).write_bytes(good)
    read_colmap(tmp_path)  # intact again


def test_colmap_image_with_unknown_camera_id(tmp_path):
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320 240\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.jpg\n\n7 1 0 0 0 0 0 0 9 b.jpg\n\n")
    with pytest.raises(InstaSceneError, match=r"camera_id 9") as e:
        read_colmap(tmp_path)
    assert "images.txt" in str(e.value) and "b.jpg" in str(e.value)


def test_colmap_malformed_text_and_missing_files(tmp_path):
    with pytest.raises(InstaSceneError, match="not found"):
        read_colmap(tmp_path / "nowhere")
    with pytest.raises(InstaSceneError, match="missing cameras.txt, images.txt"):
        read_colmap(tmp_path)
    (tmp_path / "cameras.bin").write_bytes(b"")
    with pytest.raises(InstaSceneError, match="missing images.bin"):
        read_colmap(tmp_path)
    (tmp_path / "cameras.bin").unlink()
    (tmp_path / "cameras.txt").write_text("# header\n1 PINHOLE 640 480 500 500 320 240\n")
    (tmp_path / "images.txt").write_text("# header\n1 1 0 0 0 x 0 0 1 a.jpg\n\n")
    with pytest.raises(InstaSceneError, match="line 2"):
        read_colmap(tmp_path)
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.jpg\n1.0 2.0\n")
    with pytest.raises(InstaSceneError, match="line 2.*triplets"):
        read_colmap(tmp_path)
    (tmp_path / "cameras.txt").write_text("\n\n1 PINHOLE 640 480 500 500 320\n")
    with pytest.raises(InstaSceneError, match="line 3.*4 parameters"):
        read_colmap(tmp_path)
    with pytest.raises(InstaSceneError, match="missing points3D.txt"):
        read_points3d(tmp_path)


@pytest.mark.parametrize("binary", [True, False])
def test_points3d_round_trip(tmp_path, binary):
    rng = np.random.default_rng(6)
    xyz = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    write_colmap(tmp_path, random_cameras(rng, 2), binary=binary, points=(xyz, rgb))
    xyz2, rgb2 = read_points3d(tmp_path)
    assert xyz2.dtype == np.float64 and rgb2.dtype == np.uint8
    np.testing.assert_array_equal(xyz2, xyz)
    np.testing.assert_array_equal(rgb2, rgb)

    write_colmap(tmp_path / "empty", [], binary=binary)
    xyz3, rgb3 = read_points3d(tmp_path / "empty")
    assert xyz3.shape == (0, 3) and rgb3.shape == (0, 3)
    assert read_colmap(tmp_path / "empty") == []


def test_points3d_bin_with_tracks(tmp_path):
    # Real COLMAP points carry tracks; the reader must step over them.
    rec = b""
    for pid, (x, c, track) in enumerate([((1.0, 2.0, 3.0), (255, 0, 7), [(1, 0), (2, 5)]), ((4.0, 5.0, 6.0), (1, 2, 3), [])]):
        rec += struct.pack("<Q3d3BdQ", pid + 10, *x, *c, 0.5, len(track))
        rec += b"".join(struct.pack("<ii", *t) for t in track)
    (tmp_path / "points3D.bin").write_bytes(struct.pack("<Q", 2) + rec)
    xyz, rgb = read_points3d(tmp_path)
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(rgb, [[255, 0, 7], [1, 2, 3]])
    (tmp_path / "points3D.bin").write_bytes(struct.pack("<Q", 2) + rec[:-10])
    with pytest.raises(InstaSceneError, match="truncated"):
        read_points3d(tmp_path)


# --------------------------------------------------------------------- cameras.json


def test_cameras_json_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    cams = []
    for i in range(4):  # principal point at the centre: cameras.json stores none
        pose = pose_from_rotation_translation(random_rotation(rng), rng.normal(size=3))
        cams.append(Camera(f"v{i}", 640, 480, intrinsics(500.0 + i, 510.0, 320.0, 240.0), pose))
    path = tmp_path / "cameras.json"
    write_cameras_json(path, cams)
    entries = json.loads(path.read_text())
    assert [e["id"] for e in entries] == [0, 1, 2, 3]
    assert set(entries[0]) == {"id", "img_name", "width", "height", "position", "rotation", "fx", "fy"}
    back = read_cameras_json(path)
    assert_same_cameras(back, cams)


def test_cameras_json_convention(tmp_path):
    # rotation = camera-to-world (rows), OpenCV axes; position = camera centre.
    p = np.array([2.0, -3.0, 1.5])
    R = look_at_origin(p)[:3, :3]
    entry = {"id": 0, "img_name": "x", "width": 200, "height": 100, "position": p.tolist(),
             "rotation": R.T.tolist(), "fx": 150.0, "fy": 150.0}
    (tmp_path / "c.json").write_text(json.dumps([entry]))
    (cam,) = read_cameras_json(tmp_path / "c.json")
    np.testing.assert_allclose(cam.center, p, atol=1e-14)
    np.testing.assert_allclose(project(cam, np.zeros(3)), [100, 50], atol=1e-12)
    # and a point off to the camera's right (+x) lands right of centre
    assert project(cam, R[0] * 0.1)[0] > 100


def test_cameras_json_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[\n  {"id": 0,\n  "img_name": }\n]')
    with pytest.raises(InstaSceneError, match="line 3, column"):
        read_cameras_json(path)
    good = {"id": 0, "img_name": "x", "width": 2, "height": 2, "position": [0, 0, 0],
            "rotation": np.eye(3).tolist(), "fx": 1.0, "fy": 1.0}
    for bad, pattern in [
        ({k: v for k, v in good.items() if k != "fx"}, "entry 1 lacks field 'fx'"),
        ({**good, "rotation": [[1, 0], [0, 1]]}, r"entry 1: rotation must have shape \[3, 3\]"),
        ({**good, "position": [0, float("nan"), 0]}, "entry 1: position contains non-finite"),
        ({**good, "fy": float("inf")}, "entry 1: fy contains non-finite"),
        ({**good, "width": 2.5}, "entry 1: width must be a positive integer"),
    ]:
        path.write_text(json.dumps([good, bad]))
        with pytest.raises(InstaSceneError, match=pattern):
            read_cameras_json(path)
    with pytest.raises(InstaSceneError, match="not found"):
        read_cameras_json(tmp_path / "missing.json")


# --------------------------------------------------------------------- transforms.json


def test_transforms_json_convention(tmp_path):
    # OpenGL camera at +z looking down -z (identity rotation) sees the origin dead ahead.
    c2w_gl = np.eye(4)
    c2w_gl[:3, 3] = [0.0, 0.0, 4.0]
    doc = {"camera_angle_x": 0.6911112070083618, "w": 800, "h": 600,
           "frames": [{"file_path": "./train/r_0", "transform_matrix": c2w_gl.tolist()}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(doc))
    (cam,) = read_transforms_json(tmp_path / "transforms_train.json")
    assert (cam.name, cam.image_name, cam.width, cam.height) == ("r_0", "train/r_0.png", 800, 600)
    fx = 0.5 * 800 / np.tan(0.5 * doc["camera_angle_x"])
    np.testing.assert_allclose(cam.K, intrinsics(fx, fx, 400, 300), rtol=1e-15)
    np.testing.assert_allclose(cam.center, [0, 0, 4], atol=1e-15)
    np.testing.assert_allclose(project(cam, np.zeros(3)), [400, 300], atol=1e-12)
    # OpenGL y is up, OpenCV y is down: a point above the origin lands in the upper half
    assert project(cam, np.array([0.0, 0.5, 0.0]))[1] < 300
    np.testing.assert_allclose(cam.world_to_camera[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=0)


def test_transforms_json_size_from_png_and_explicit_intrinsics(tmp_path):
    from PIL import Image

    (tmp_path / "train").mkdir()
    Image.new("RGBA", (40, 30)).save(tmp_path / "train" / "r_0.png")
    frame = {"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist()}
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"camera_angle_x": 1.0, "frames": [frame, {**frame, "file_path": "./train/r_1"}]}))
    cams = read_transforms_json(path)
    assert [(c.name, c.width, c.height) for c in cams] == [("r_0", 40, 30), ("r_1", 40, 30)]
    assert cams[0].fx == cams[0].fy and (cams[0].cx, cams[0].cy) == (20.0, 15.0)

    path.write_text(json.dumps({"fl_x": 50.0, "fl_y": 52.0, "cx": 19.5, "cy": 14.0, "frames": [frame]}))
    np.testing.assert_array_equal(read_transforms_json(path)[0].K, intrinsics(50, 52, 19.5, 14))

    path.write_text(json.dumps({"camera_angle_x": 1.0, "frames": [{**frame, "file_path": "./test/r_0"}]}))
    with pytest.raises(InstaSceneError, match="image size is unknown"):
        read_transforms_json(path)
    path.write_text(json.dumps({"camera_angle_x": 1.0, "w": 4, "h": 4, "frames": [{"file_path": "a"}]}))
    with pytest.raises(InstaSceneError, match="frame 0 lacks field 'transform_matrix'"):
        read_transforms_json(path)
