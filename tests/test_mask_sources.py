"""Mask sources (issue 4): SAM through transformers on a tiny offline model, the weight-free
fallback, and the choice between them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from instascene.errors import InstaSceneError
from instascene.segment.mask_sources import (
    choose_source,
    describe_source,
    fallback_label_maps,
    relabel,
    sam_label_maps,
)


def _check_flat(label: np.ndarray, shape):
    assert label.shape == shape
    assert label.dtype == np.int32
    ids = np.unique(label)
    assert ids.min() >= 0
    pos = ids[ids > 0]
    assert list(pos) == list(range(1, len(pos) + 1))  # 1..K consecutive


# ---------------------------------------------------------------------- SAM


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> Path:
    """A randomly initialised, very small SAM saved like a real checkpoint folder (no download)."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    vision = tr.SamVisionConfig(
        hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=64,
        patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=16, mlp_dim=64,
    )
    prompt = tr.SamPromptEncoderConfig(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = tr.SamMaskDecoderConfig(
        hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32
    )
    torch.manual_seed(0)
    model = tr.SamModel(tr.SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    folder = tmp_path_factory.mktemp("tiny_sam")
    model.save_pretrained(folder)
    image_processor = tr.SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    tr.SamProcessor(image_processor).save_pretrained(folder)
    return folder


def _random_images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)]


def test_sam_label_maps_tiny_model(tiny_sam):
    images = _random_images()
    # a random model predicts IoU ~ 0 and unstable masks: open the filters so masks get through
    kw = dict(points_per_side=4, pred_iou_thresh=-1.0, stability_thresh=0.0, min_area_frac=0.0, device="cpu")
    a = sam_label_maps(images, tiny_sam, **kw)
    assert len(a) == 2
    for lab, im in zip(a, images):
        _check_flat(lab, im.shape[:2])
    assert any(lab.max() > 0 for lab in a)  # the painting path ran
    b = sam_label_maps(images, str(tiny_sam), **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # the default filters on the same model: still well-formed maps (probably empty)
    for lab, im in zip(sam_label_maps(images, tiny_sam, points_per_side=2, device="cpu"), images):
        _check_flat(lab, im.shape[:2])


def test_sam_missing_folder(tmp_path):
    missing = tmp_path / "no_such_weights"
    with pytest.raises(InstaSceneError) as e:
        sam_label_maps(_random_images(), missing)
    assert str(missing) in str(e.value)


def test_sam_folder_without_weights(tmp_path, tiny_sam):
    folder = tmp_path / "sam_no_weights"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_sam / "config.json").read_text())
    with pytest.raises(InstaSceneError) as e:
        sam_label_maps(_random_images(), folder)
    msg = str(e.value)
    assert str(folder) in msg and "weights" in msg and "config.json" not in msg.split(":", 1)[1].split(";")[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InstaSceneError, match="no config.json") as e:
        sam_label_maps(_random_images(), empty)
    assert str(empty) in str(e.value)


def test_sam_corrupt_weights(tmp_path, tiny_sam):
    folder = tmp_path / "sam_corrupt"
    folder.mkdir()
    for f in tiny_sam.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InstaSceneError) as e:
        sam_label_maps(_random_images(), folder)
    assert str(folder) in str(e.value)


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


def test_choose_source():
    assert choose_source(_scene(3, 3)) == "scene"
    assert choose_source(_scene(3, 1), "w") == "scene"
    src, line = describe_source(_scene(3, 1))
    assert src == "scene" and "1 of 3" in line and "\n" not in line
    assert choose_source(_scene(3, 0), "/weights/sam") == "sam"
    assert "/weights/sam" in describe_source(_scene(3, 0), "/weights/sam")[1]
    assert choose_source(_scene(3, 0)) == "fallback"
    assert choose_source(_scene(0, 0)) == "fallback"
