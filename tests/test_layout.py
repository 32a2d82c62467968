"""The wall between the add-on and the backend, and the extension manifest's validity."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> set[str]:
    names = set()
    for py in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_backend_never_imports_blender():
    assert not {"bpy", "bmesh", "mathutils"} & imported_modules(ROOT / "backend")


def test_addon_uses_only_bpy_numpy_and_stdlib():
    allowed = {"bpy", "bmesh", "mathutils", "numpy", "requests"} | set(sys.stdlib_module_names)
    assert imported_modules(ROOT / "instascene_blender") <= allowed


def test_extension_manifest_passes_blenders_validator(tmp_path):
    spec = importlib.util.find_spec("bpy")
    if spec is None:
        pytest.skip("bpy not installed")
    validator = next(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"), None)
    if validator is None:
        pytest.skip("Blender's extension validator not found in the bpy wheel")
    src = tmp_path / "instascene"
    shutil.copytree(ROOT / "instascene_blender", src)
    shutil.copy(ROOT / "blender_manifest.toml", src)
    r = subprocess.run([sys.executable, str(validator), "validate", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
