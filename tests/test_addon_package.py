"""`make addon`: Blender's own extension tool builds and validates the zip, and the zip installs
and enables as an extension (Install from Disk) in a throw-away Blender user folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")  # the extension tool ships inside the bpy wheel

ROOT = Path(__file__).resolve().parents[1]
DONUT = ROOT.parent / "shared" / "data" / "donut_3dgs.ply"


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    out = tmp_path_factory.mktemp("dist")
    # -o: never re-run the venv set-up from a test
    r = subprocess.run(["make", "-o", ".venv/.installed", "addon", f"ADDON_DIST={out}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    zips = list(out.glob("instascene-*.zip"))
    assert len(zips) == 1, r.stdout
    return zips[0]


def test_make_addon_builds_a_valid_zip(addon_zip):
    names = set(zipfile.ZipFile(addon_zip).namelist())
    assert {"blender_manifest.toml", "__init__.py", "io/ply.py", "blender/splats.py", "operators.py"} <= names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    tool = next(p for d in sys.path if d and Path(d).is_dir()
                for p in Path(d).glob("bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    r = subprocess.run([sys.executable, str(tool), "validate", str(addon_zip)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_zip_installs_and_enables_as_extension(addon_zip, tmp_path):
    script = textwrap.dedent(f"""
        import bpy, sys
        bpy.ops.extensions.package_install_files(filepath={str(addon_zip)!r}, repo="user_default",
                                                 enable_on_install=True)
        mod = "bl_ext.user_default.instascene"
        assert mod in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
        prefs = bpy.context.preferences.addons[mod].preferences
        assert prefs.backend_url == "http://127.0.0.1:8765", prefs.backend_url
        assert hasattr(bpy.types, "VIEW3D_PT_instascene")
        assert "instascene_blender" not in sys.modules  # the installed copy, not the checkout
        if {DONUT.exists()!r}:
            bpy.ops.instascene.import_scene(filepath={str(DONUT)!r})
            obj = [o for o in bpy.data.objects if o.get("instascene_splats")][0]
            assert len(obj.data.vertices) == 45624
        bpy.ops.preferences.addon_disable(module=mod)
        assert not hasattr(bpy.types, "VIEW3D_PT_instascene")
        print("INSTALLED-OK")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "BLENDER_USER"))}
    env["HOME"] = str(tmp_path)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert "INSTALLED-OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
