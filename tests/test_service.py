"""The backend service (`instascene serve`) against a real uvicorn server in a subprocess.

Job lifecycle (validate, render), cancel, two clients at once, restart during a job,
tokens, path escapes, a malformed PLY, size limits, the 501 kinds, OpenAPI, files, click queries.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from instascene.io.cameras import ring_cameras
from instascene.io.colmap import write_colmap
from instascene.io.ply import write_ply
from instascene.service import jobs
from instascene.service.store import INTERRUPTED_QUEUED, INTERRUPTED_RUNNING
from test_scene import instascene_folder, make_splats

BACKEND = Path(__file__).resolve().parents[1] / "backend"
MAX_UPLOAD = 100 * 1024


# ---------------------------------------------------------------------- helpers


def ring_scene(root: Path, views: int, size: int = 64, n: int = 2000, seed: int = 0) -> Path:
    """point_cloud.ply + sparse/0 (no images): `views` cameras on a ring around a blob of splats."""
    s = make_splats(n, seed=seed, segfeat=False)
    s.means *= 0.5
    s.log_scales[:] = np.log(0.05)
    write_ply(root / "point_cloud.ply", s)
    write_colmap(root / "sparse" / "0", ring_cameras([0, 0, 0], 4.0, views, 20.0, size, size, fov_deg=50))
    return root


class Server:
    """`instascene serve` on a free loopback port (--port 0; the port is read from its first line)."""

    def __init__(self, base: Path, data: Path, state: Path | None = None, token_file: Path | None = None):
        self.data = data
        self.state = state or base / "state"
        self.token_file = token_file or base / "config" / "token"
        self.log = base / f"server-{time.monotonic_ns()}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BACKEND), os.environ.get("PYTHONPATH", "")]),
                   XDG_CONFIG_HOME=str(base / "xdg-config"), XDG_STATE_HOME=str(base / "xdg-state"))
        env.pop("INSTASCENE_WEIGHTS", None)
        cmd = [sys.executable, "-m", "instascene", "serve", "--port", "0", "--data-root", str(data),
               "--token-file", str(self.token_file), "--state-dir", str(self.state),
               "--max-upload", str(MAX_UPLOAD), "--log-level", "warning"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            self.url = self._wait_up()
        except BaseException:
            self.stop()
            raise
        self.token = self.token_file.read_text().strip()
        self.client = httpx.Client(base_url=self.url, headers=self.auth(), timeout=20)

    def _wait_up(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log.read_text()}")
            if url is None:
                m = re.search(r"http://127\.0\.0\.1:(\d+)", self.log.read_text())
                url = f"http://127.0.0.1:{m.group(1)}" if m else None
            if url is not None:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not come up:\n{self.log.read_text()}")

    def auth(self, token: str | None = None) -> dict:
        return {"Authorization": f"Bearer {token or self.token}"}

    def submit(self, kind: str, scene: str | None, run: str, **options) -> str:
        r = self.client.post("/jobs", json={"kind": kind, "scene": scene, "run": run, "options": options})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def wait(self, job_id: str, until=lambda j: j["state"] in ("done", "failed", "cancelled"), timeout=30.0,
             client: httpx.Client | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = (client or self.client).get(f"/jobs/{job_id}").json()
            if until(job):
                return job
            time.sleep(0.03)
        raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")

    def stop(self, sig=signal.SIGTERM) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    instascene_folder(root / "small")
    ring_scene(root / "long", views=150)
    ring_scene(root / "quick_a", views=6, size=48, n=1000, seed=1)
    ring_scene(root / "quick_b", views=6, size=48, n=1000, seed=2)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, data):
    srv = Server(tmp_path_factory.mktemp("srv"), data)
    yield srv
    srv.stop()


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------- the service


def test_health_token_and_openapi(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # no token needed
    mode = stat.S_IMODE(server.token_file.stat().st_mode)
    assert mode == 0o600 and len(server.token) >= 32

    for headers in ({}, server.auth("wrong-token-" + "x" * 30), {"Authorization": "Basic abc"}):
        for method, path in (("GET", "/capabilities"), ("GET", "/jobs"), ("GET", "/openapi.json"),
                             ("POST", "/jobs"), ("GET", "/files/small/point_cloud.ply")):
            r = httpx.request(method, server.url + path, headers=headers, json={} if method == "POST" else None)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
    assert "missing token" in httpx.get(server.url + "/jobs").json()["detail"]
    assert httpx.get(server.url + "/jobs", headers=server.auth("nope" * 10)).json()["detail"] == "wrong token"

    schema = server.client.get("/openapi.json").json()
    assert {"/health", "/capabilities", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    kinds = schema["components"]["schemas"]["JobRequest"]["properties"]["kind"]["enum"]
    assert set(kinds) == {"validate", "render", "segment", "complete", "run"}


def test_capabilities(server):
    caps = server.client.get("/capabilities").json()
    assert caps["device"]["type"] in ("cpu", "cuda")
    if caps["device"]["type"] == "cuda":
        assert caps["device"]["gpu"]["name"] and caps["device"]["gpu"]["memory_total_bytes"] > 0
    assert caps["versions"]["instascene"] and caps["versions"]["torch"]
    assert caps["weights"] == {**caps["weights"], "configured": False, "found": False}
    assert caps["jobs"]["kinds"] == ["validate", "render", "segment", "complete", "run"]
    assert caps["jobs"]["unavailable"] == {}
    assert caps["data_roots"] == [str(server.data.resolve())]
    assert caps["limits"]["upload_bytes"] == MAX_UPLOAD


def test_validate_lifecycle(server, data):
    job_id = server.submit("validate", "small", "runs/validate")
    job = server.wait(job_id)
    assert job["state"] == "done", job
    assert job["progress"] == 1.0 and job["error"] is None
    assert job["scene"] == str((data / "small").resolve()) and job["run"] == str((data / "runs/validate").resolve())
    assert job["created"] <= job["started"] <= job["finished"]
    summary = json.loads((data / "runs/validate/scene_summary.json").read_text())
    assert summary["splats"]["count"] == 20 and summary["cameras"]["count"] == 3
    assert summary["layout"] == "instascene" and len(summary["splats"]["bounds"]["min"]) == 3
    assert job["result"]["gaussians"] == 20
    # the same file streamed back, by relative and by absolute path
    assert server.client.get("/files/runs/validate/scene_summary.json").json() == summary
    assert server.client.get(f"/files/{data.resolve()}/runs/validate/scene_summary.json").json() == summary
    lines = server.client.get(f"/jobs/{job_id}/log").json()["lines"]
    assert any("validate started" in line for line in lines) and "done in" in lines[-1]
    assert job_id in [j["id"] for j in server.client.get("/jobs").json()["jobs"]]


def test_render_lifecycle(server, data):
    job_id = server.submit("render", "small", "runs/render", background="white", device="cpu")
    seen = []
    job = server.wait(job_id, until=lambda j: seen.append(j["progress"]) or j["state"] in ("done", "failed"))
    assert job["state"] == "done", job
    assert job["progress"] == 1.0 and seen == sorted(seen)
    pngs = sorted((data / "runs/render/renders").glob("*.png"))
    assert [p.stem for p in pngs] == ["view_a", "view_b", "view_c"]
    for p in pngs:
        assert Image.open(p).size == (32, 24)
    assert job["result"]["renders"] == [f"renders/{p.name}" for p in pngs]
    listing = server.client.get("/files/runs/render/renders").json()
    assert [e["name"] for e in listing["entries"]] == [p.name for p in pngs]

    r = server.client.post("/jobs", json={"kind": "render", "scene": "small", "run": "runs/render-bad",
                                          "options": {"scale": -1}})  # refused before any job exists
    assert r.status_code == 422 and "'scale' must be a number" in r.json()["detail"]


def test_cancel_running_render(server, data):
    job_id = server.submit("render", "long", "runs/cancel", device="cpu")
    running = server.wait(job_id, until=lambda j: j["state"] == "running" and j["progress"] > 0)
    r = server.client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    job = server.wait(job_id, timeout=10)
    assert job["state"] == "cancelled", job
    assert job["progress"] < 1
    renders = data / "runs/cancel/renders"
    done = sorted(renders.glob("*.png"))
    assert 1 <= len(done) < 150 and no_temporaries(renders)
    for p in done:  # every file there is whole
        assert Image.open(p).size == (64, 64)
    assert running["progress"] > 0
    assert server.client.post(f"/jobs/{job_id}/cancel").status_code == 409  # already finished
    assert server.client.post("/jobs/nosuchjob/cancel").status_code == 404
    assert server.client.get("/jobs/nosuchjob").status_code == 404


def test_cancel_queued_job(server):
    first = server.submit("render", "long", "runs/cancel-q1", device="cpu")
    second = server.submit("validate", "small", "runs/cancel-q2")
    job = server.client.post(f"/jobs/{second}/cancel").json()
    assert job["state"] == "cancelled" and job["started"] is None
    server.client.post(f"/jobs/{first}/cancel")
    assert server.wait(first)["state"] == "cancelled"
    assert server.client.get(f"/jobs/{second}").json()["state"] == "cancelled"


def test_two_clients_at_once(server, data):
    results = {}

    def client_session(name):
        with httpx.Client(base_url=server.url, headers=server.auth(), timeout=20) as c:
            r = c.post("/jobs", json={"kind": "render", "scene": name, "run": f"runs/two/{name}",
                                      "options": {"device": "cpu"}})
            assert r.status_code == 202, r.text
            results[name] = server.wait(r.json()["id"], client=c)

    threads = [threading.Thread(target=client_session, args=(n,)) for n in ("quick_a", "quick_b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) == {"quick_a", "quick_b"}
    a, b = sorted(results.values(), key=lambda j: j["started"])
    assert a["state"] == b["state"] == "done"
    assert a["finished"] <= b["started"]  # one GPU job at a time: the second waited
    for name in results:
        assert len(list((data / "runs/two" / name / "renders").glob("*.png"))) == 6


def test_malformed_ply_is_a_clear_job_error(server, data):
    bad = data / "bad"
    instascene_folder(bad)
    ply = bad / "point_cloud.ply"
    ply.write_bytes(ply.read_bytes()[:-100])  # truncated
    for kind in ("validate", "render"):
        job = server.wait(server.submit(kind, "bad", f"runs/bad-{kind}"))
        assert job["state"] == "failed"
        assert "point_cloud.ply" in job["error"] and "Traceback" not in job["error"]
        assert job["message"] == job["error"] and "\n" not in job["error"]
    assert not (data / "runs/bad-validate/scene_summary.json").exists()


def test_bad_requests(server, data, tmp_path):
    def post(**body):
        return server.client.post("/jobs", json={"kind": "validate", "run": "runs/x", **body})

    r = post(scene="no/such/scene")
    assert r.status_code == 404 and "scene not found" in r.json()["detail"]
    (data / "a_file").write_text("x")
    r = post(scene="small", run="a_file")
    assert r.status_code == 400 and "not a folder" in r.json()["detail"]
    r = post(scene="small", run=".")
    assert r.status_code == 400
    r = server.client.post("/jobs", json={"kind": "validate", "scene": "small"})
    assert r.status_code == 422 and "run" in r.json()["detail"]
    r = server.client.post("/jobs", json={"kind": "explode", "scene": "small", "run": "r"})
    assert r.status_code == 422 and "'validate'" in r.json()["detail"]
    r = server.client.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    # a lone surrogate is valid JSON but no text: refused, naming the field, no job created, worker alive
    n_jobs = len(server.client.get("/jobs").json()["jobs"])
    for body in ({"run": "up/\udcff"}, {"run": "r", "options": {"note": ["ok", "\udcff"]}},
                 {"run": "r", "options": {"\udcff": 1}}):
        r = server.client.post("/jobs", content=json.dumps({"kind": "validate", "scene": "small", **body}),
                               headers={"content-type": "application/json"})
        assert r.status_code == 422 and "not valid Unicode" in r.json()["detail"], r.text
    r = server.client.get("/jobs")
    assert r.status_code == 200 and len(r.json()["jobs"]) == n_jobs
    assert server.wait(server.submit("validate", "small", "runs/after-surrogate"))["state"] == "done"
    # a model folder is loaded only from inside the data roots; outside, existing or not, says nothing more
    for kind, key in (("segment", "sam_weights"), ("complete", "weights"), ("run", "sam_weights")):
        for weights, code, words in (("/etc", 403, "outside the data roots"), ("/no/such", 403, "outside the data roots"),
                                     ("nowhere", 404, "no such folder"), (5, 422, "folder path")):
            r = server.client.post("/jobs", json={"kind": kind, "scene": "small", "run": "runs/w",
                                                  "options": {key: weights}})
            assert r.status_code == code and words in r.json()["detail"], (kind, weights, r.text)
            assert "config.json" not in r.text
    # options are checked before a job exists: 422 naming the option (issue 20, item 5)
    for kind, options, words in (("segment", {"iterations": "many"}, "'iterations' must be a whole number"),
                                 ("segment", {"iterations": -5}, "'iterations' must be between"),
                                 ("segment", {"iterations": 2.5}, "whole number"),
                                 ("segment", {"criterion": "bogus"}, "'criterion' must be one of"),
                                 ("segment", {"threshold": 0.5}, "'threshold' is not a segmentation option"),
                                 ("segment", {"device": "tpu"}, "'device' must be one of auto, cpu, cuda"),
                                 ("complete", {"finetune_iterations": True}, "whole number"),
                                 ("complete", {"instances": "all"}, "'instances' must be a non-empty list"),
                                 ("complete", {"instances": ["x1"]}, "'instances' must be a whole number"),
                                 ("complete", {"generator": "magic"}, "'generator' must be one of"),
                                 ("run", {"min_gaussians": 0}, "'min_gaussians' must be between"),
                                 ("render", {"scale": 9}, "'scale' must be a number"),
                                 ("validate", {"x": 1}, "unknown validate option")):
        body = {"kind": kind, "scene": "small", "run": "runs/opt", "options": options}
        r = server.client.post("/jobs", json=body)
        assert r.status_code == 422 and words in r.json()["detail"], (kind, options, r.text)
    r = server.client.post("/jobs", content=b'{"kind": "segment", "scene": "small", "run": "r", '
                                            b'"options": {"iterations": NaN}}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "whole number" in r.json()["detail"], r.text
    r = post(scene="small", run="a_file/sub")
    assert r.status_code == 400 and "a_file is a file" in r.json()["detail"]
    assert len(server.client.get("/jobs").json()["jobs"]) == n_jobs + 1
    # completion of a folder that segmentation never wrote: a failed job that says why
    job = server.wait(server.submit("complete", None, "runs/never-segmented"))
    assert job["state"] == "failed" and "not a run folder" in job["error"] and "instascene segment" in job["error"]


def test_path_escapes(server, data, tmp_path):
    outside = tmp_path / "outside"
    instascene_folder(outside)
    (data / "escape").symlink_to(outside, target_is_directory=True)
    (data / "inside_link").symlink_to(data / "small", target_is_directory=True)

    def post(scene, run="runs/esc"):
        return server.client.post("/jobs", json={"kind": "validate", "scene": scene, "run": run})

    for scene in ("../outside", "small/../../outside", str(outside), "escape", "escape/point_cloud.ply"):
        r = post(scene)
        assert r.status_code == 403, (scene, r.text)
        assert "'..'" in r.json()["detail"] or "outside the data roots" in r.json()["detail"]
    assert "symbolic link" in post("escape").json()["detail"]
    assert post("small", run="escape/run").status_code == 403
    assert post("small", run="../run").status_code == 403
    assert post("inside_link").status_code == 202  # a link that stays inside is fine

    for path in ("escape/point_cloud.ply", "small/%2E%2E/%2E%2E/etc/passwd", "/etc/passwd"):
        r = server.client.get("/files/" + path)
        assert r.status_code == 403, (path, r.text)
        r = server.client.put("/files/" + path, content=b"x")
        assert r.status_code == 403, (path, r.text)
    assert not (outside / "x").exists()
    assert server.client.get("/files/small/nothing.ply").status_code == 404


def test_upload_then_validate(server, data, tmp_path):
    local = tmp_path / "local"
    instascene_folder(local)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = f.relative_to(local).as_posix()
        r = server.client.put(f"/files/uploads/scene/{rel}", content=f.read_bytes())
        assert r.status_code == 201, r.text
        assert r.json()["size"] == f.stat().st_size
    assert (data / "uploads/scene/point_cloud.ply").read_bytes() == (local / "point_cloud.ply").read_bytes()
    job = server.wait(server.submit("validate", "uploads/scene", "uploads/run"))
    assert job["state"] == "done", job
    r = server.client.get("/files/uploads/run/scene_summary.json")
    assert r.status_code == 200 and r.json()["splats"]["count"] == 20
    ply = server.client.get("/files/uploads/scene/point_cloud.ply")
    assert ply.content == (local / "point_cloud.ply").read_bytes()
    assert server.client.put("/files/uploads/scene", content=b"x").status_code == 409  # a folder


def query_scene(data: Path) -> tuple[Path, Path]:
    """A small generated scene and a run folder made from its ground truth, with one-hot
    features per label (so a click's similar set is exactly its instance)."""
    from instascene.synth.generate import SynthOptions, generate_scene
    from test_complete import make_run

    scene, run = data / "qscene", data / "runs" / "q"
    generate_scene(scene, SynthOptions(seed=5, objects=2, views=8, width=96, height=72, mask_noise=0.0))
    make_run(scene, run)
    labels = np.load(run / "labels.npy")
    feats = np.zeros((len(labels), 16), np.float32)
    feats[np.arange(len(labels)), labels + 1] = 1.0
    np.save(run / "features.npy", feats)
    return scene, run


def test_query_click_to_select(server, data, tmp_path):
    from scipy.ndimage import distance_transform_edt

    from instascene.io.ply import read_ply

    scene, run = query_scene(data)
    labels = np.load(run / "labels.npy")
    means = read_ply(scene / "point_cloud.ply").means

    def query(**body):
        return server.client.post("/query", json={"run": "runs/q", **body})

    for k in np.unique(labels[labels >= 0]):
        pts = means[labels == k]
        near_centroid = pts[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))] + 1e-4  # on its surface, by the centroid
        r = query(point=near_centroid.tolist())
        assert r.status_code == 200, r.text
        a = r.json()
        n = int((labels == k).sum())
        assert a["instance"] == k and a["instance_gaussians"] == n and a["similar_gaussians"] == n
        assert a["similar_instances"] == {str(k): n}
    far = query(point=[5.0, 5.0, 5.0]).json()
    assert far["instance"] is None and far["gaussian"] is None and far["similar_instances"] == {}
    assert query(point=[5.0, 5.0, 5.0], max_distance=100.0).json()["instance"] is not None

    # a pixel deep inside an object's ground-truth mask selects that object
    gt = np.asarray(Image.open(scene / "gt/views/frame_0000.png"))
    k = int(np.bincount(gt[gt > 0]).argmax()) - 1
    y, x = np.unravel_index(np.argmax(distance_transform_edt(gt == k + 1)), gt.shape)
    r = query(view="frame_0000", pixel=[int(x), int(y)])
    assert r.status_code == 200 and r.json()["instance"] == k, r.text

    r = query(view="frame_9999", pixel=[1, 1])
    assert r.status_code == 400 and "unknown view 'frame_9999'" in r.json()["detail"]
    r = query(view="frame_0000", pixel=[96, 10])
    assert r.status_code == 400 and "outside view" in r.json()["detail"] and "96x72" in r.json()["detail"]
    for body in ({"pixel": [1, 1]}, {}, {"point": [0, 0, 0], "view": "frame_0000", "pixel": [1, 1]}):
        r = query(**body)
        assert r.status_code == 400 and "'view'" in r.json()["detail"], (body, r.text)
    for body in ({"point": [0, 0]}, {"point": [0, 0, 0], "colour": "red"}, {"point": [0, 0, 0], "max_distance": -1}):
        assert query(**body).status_code == 422, body
    r = query(run="small", point=[0, 0, 0])
    assert r.status_code == 400 and "not a segmentation run folder" in r.json()["detail"]
    r = query(run="runs/none", point=[0, 0, 0])
    assert r.status_code == 404 and "run folder not found" in r.json()["detail"]

    # outside the data roots: the run itself, or a run inside whose scene is outside
    outside = tmp_path / "run"
    outside.mkdir()
    for name in ("labels.npy", "features.npy", "instances.json"):
        (outside / name).write_bytes((run / name).read_bytes())
    r = query(run=str(outside), point=[0, 0, 0])
    assert r.status_code == 403 and "outside the data roots" in r.json()["detail"]
    sneaky = data / "runs" / "sneaky"
    sneaky.mkdir()
    for name in ("labels.npy", "features.npy"):
        (sneaky / name).write_bytes((run / name).read_bytes())
    doc = json.loads((run / "instances.json").read_text())
    (sneaky / "instances.json").write_text(json.dumps({**doc, "scene": str(tmp_path / "scene")}))
    r = query(run="runs/sneaky", point=[0, 0, 0])
    assert r.status_code == 403 and "the run's scene" in r.json()["detail"]
    assert httpx.post(server.url + "/query", json={"run": "runs/q", "point": [0, 0, 0]}).status_code == 401


def test_size_limits(server, data):
    r = server.client.post("/jobs", json={"kind": "validate", "scene": "s" * 70_000, "run": "r"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 10_000
    r = server.client.post("/jobs", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413

    big = os.urandom(MAX_UPLOAD + 1)
    r = server.client.put("/files/uploads/big.bin", content=big)
    assert r.status_code == 413 and "--max-upload" in r.json()["detail"]
    r = server.client.put("/files/uploads/big2.bin", content=iter([big[:60_000], big[60_000:]]))
    assert r.status_code == 413
    assert not (data / "uploads/big.bin").exists() and not (data / "uploads/big2.bin").exists()
    assert no_temporaries(data / "uploads") if (data / "uploads").exists() else True
    ok = server.client.put("/files/uploads/fits.bin", content=big[:MAX_UPLOAD])
    assert ok.status_code == 201 and (data / "uploads/fits.bin").stat().st_size == MAX_UPLOAD


def test_restart_during_a_job(tmp_path, data):
    base = tmp_path / "srv"
    base.mkdir()
    a = Server(base, data)
    try:
        finished = a.wait(a.submit("validate", "small", "runs/restart-done"))
        assert finished["state"] == "done"
        running = a.submit("render", "long", "runs/restart-running", device="cpu")
        queued = a.submit("validate", "small", "runs/restart-queued")
        a.wait(running, until=lambda j: j["state"] == "running" and j["progress"] > 0)
        token = a.token
    finally:
        a.stop(signal.SIGKILL)  # a crash: nobody gets to write anything

    b = Server(base, data)
    try:
        assert b.token == token  # the token file is kept
        jobs_now = {j["id"]: j for j in b.client.get("/jobs").json()["jobs"]}
        assert jobs_now[finished["id"]]["state"] == "done"
        assert jobs_now[finished["id"]]["result"] == finished["result"]
        assert b.client.get("/files/runs/restart-done/scene_summary.json").status_code == 200
        assert jobs_now[running]["state"] == "failed" and jobs_now[running]["message"] == INTERRUPTED_RUNNING
        assert jobs_now[queued]["state"] == "failed" and jobs_now[queued]["message"] == INTERRUPTED_QUEUED
        assert INTERRUPTED_RUNNING in b.client.get(f"/jobs/{running}/log").json()["lines"][-1]
        for p in (data / "runs/restart-running/renders").glob("*.png"):
            Image.open(p).load()  # what is there is whole (a cut-off write is a hidden .tmp)

        # a clean stop (SIGTERM) during a job records the interruption itself
        again = b.submit("render", "long", "runs/restart-term", device="cpu")
        b.wait(again, until=lambda j: j["state"] == "running" and j["progress"] > 0)
    finally:
        b.stop(signal.SIGTERM)
    assert b.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    record = json.loads((base / "state" / "jobs" / f"{again}.json").read_text())
    assert record["state"] == "failed" and record["message"] == INTERRUPTED_RUNNING


def test_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BACKEND), os.environ.get("PYTHONPATH", "")]),
               XDG_CONFIG_HOME=str(tmp_path / "xdg-config"))
    token = tmp_path / "token"
    token.write_text("x" * 40)
    token.chmod(0o644)
    cases = [
        (["--data-root", str(tmp_path / "missing")], "data root is not an existing folder"),
        (["--data-root", str(tmp_path), "--token-file", str(token)], "chmod 600"),
        (["--data-root", str(tmp_path), "--max-upload", "lots"], "not a size"),
    ]
    for args, expected in cases:
        p = subprocess.run([sys.executable, "-m", "instascene", "serve", "--port", "0",
                            "--state-dir", str(tmp_path / "state"), *args],
                           capture_output=True, text=True, env=env, timeout=30)
        assert p.returncode == 2 and expected in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_running_job_says_how_long_it_has_left(tmp_path, monkeypatch):
    """GET /jobs/{id} carries the time left, estimated from the time so far and the
    progress (null before any progress; 0 once done)."""
    import threading

    from fastapi.testclient import TestClient

    from instascene.service.app import ServiceConfig, create_app

    go_on = threading.Event()

    def slow_segment(scene, run, options, progress):
        time.sleep(0.3)
        progress(0.25, "features", "step 250/1000")
        go_on.wait(10)
        return {"instances": 0}

    (tmp_path / "data").mkdir()
    instascene_folder(tmp_path / "data" / "scene")
    monkeypatch.setitem(jobs.RUNNERS, "segment", slow_segment)
    config = ServiceConfig(data_roots=[tmp_path / "data"], token="t" * 32, state_dir=tmp_path / "state")
    with TestClient(create_app(config), headers={"Authorization": "Bearer " + "t" * 32}) as c:
        job_id = c.post("/jobs", json={"kind": "segment", "scene": "scene", "run": "run"}).json()["id"]
        assert c.get(f"/jobs/{job_id}").json()["seconds_left"] is None  # nothing done yet
        deadline = time.monotonic() + 10
        while (job := c.get(f"/jobs/{job_id}").json())["progress"] < 0.25 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 0.8 <= job["seconds_left"] <= 3.0, job  # a quarter done in ≥ 0.3 s: three times that to go
        go_on.set()
        while (job := c.get(f"/jobs/{job_id}").json())["state"] != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job["state"] == "done" and job["seconds_left"] == 0.0


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_registering_a_runner_makes_the_kind_available(tmp_path, monkeypatch):
    """What the segmentation issue will do (one line in jobs.RUNNERS), in-process."""
    from fastapi.testclient import TestClient

    from instascene.service.app import ServiceConfig, create_app

    calls = []

    def fake_segment(scene, run, options, progress):
        progress(0.5, "segment", "half way")
        (run / "labels.npy").parent.mkdir(parents=True, exist_ok=True)
        (run / "labels.npy").write_bytes(b"x")
        calls.append((scene, run, options))
        return {"instances": 0}

    (tmp_path / "data").mkdir()
    instascene_folder(tmp_path / "data" / "scene")
    monkeypatch.setitem(jobs.RUNNERS, "segment", fake_segment)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model_index.json").write_text("{}")
    config = ServiceConfig(data_roots=[tmp_path / "data"], token="t" * 32, state_dir=tmp_path / "state",
                           weights=weights, weights_source="--weights")
    with TestClient(create_app(config), headers={"Authorization": "Bearer " + "t" * 32}) as c:
        caps = c.get("/capabilities").json()
        assert "segment" in caps["jobs"]["kinds"] and "segment" not in caps["jobs"]["unavailable"]
        assert caps["weights"]["configured"] and caps["weights"]["found"] and caps["weights"]["missing"] == []
        job_id = c.post("/jobs", json={"kind": "segment", "scene": "scene", "run": "run"}).json()["id"]
        deadline = time.monotonic() + 10
        while (job := c.get(f"/jobs/{job_id}").json())["state"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job["state"] == "done" and job["result"] == {"instances": 0}, job
        assert "[segment] half way" in "\n".join(c.get(f"/jobs/{job_id}/log").json()["lines"])
    assert calls[0][0] == (tmp_path / "data" / "scene").resolve()
    assert calls[0][2] == {}  # server defaults (weights) go to complete/run jobs only


def test_a_record_no_answer_could_hold_is_skipped_at_start(tmp_path):
    """A job record with a lone surrogate (written before requests were checked) would make
    every GET /jobs answer 500: the store leaves it out, and logs never fail on such text."""
    from instascene.service.store import JobStore

    store = JobStore(tmp_path)
    good = store.create("validate", "s", "r", {})
    bad = store.create("validate", "s", "up/\udcff", {})
    store.append_log(bad["id"], "run=up/\udcff")  # no UnicodeEncodeError
    assert "\\udcff" in (tmp_path / "jobs" / f"{bad['id']}.log").read_text()
    again = JobStore(tmp_path)
    assert [j["id"] for j in again.list()] == [good["id"]]
    json.dumps(again.list(), ensure_ascii=False).encode("utf-8")


def test_names_the_file_system_refuses_are_4xx_not_500(server, data):
    """Overlong names, a symbolic link loop, a name that is not UTF-8 (issue 20, item 4)."""
    long = "a" * 300
    for r in (server.client.get(f"/files/{long}"), server.client.put(f"/files/{long}", content=b"x"),
              server.client.post("/jobs", json={"kind": "validate", "scene": long, "run": "runs/long"}),
              server.client.post("/jobs", json={"kind": "validate", "scene": "small", "run": f"runs/{long}"})):
        assert r.status_code == 400 and "longer than 255 bytes" in r.json()["detail"], r.text
    loops = data / "loops"
    loops.mkdir(exist_ok=True)
    for a, b in (("x", "y"), ("y", "x")):
        if not (loops / a).is_symlink():
            (loops / a).symlink_to(loops / b)
    r = server.client.get("/files/loops/x")
    assert r.status_code == 400 and "symbolic link loop" in r.json()["detail"], r.text
    odd = data / "odd"
    odd.mkdir(exist_ok=True)
    fd = os.open(os.fsencode(odd) + b"/caf\xe9.ply", os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    (odd / "fine.ply").write_bytes(b"x")
    r = server.client.get("/files/odd")
    assert r.status_code == 200 and [e["name"] for e in r.json()["entries"]] == ["fine.ply"]
    r = server.client.get("/files/loops")
    assert r.status_code == 200


def test_upload_names_kept_for_half_written_files_are_refused(server):
    r = server.client.put("/files/uploads/.scene.ply.tmp", content=b"x")
    assert r.status_code == 400 and "kept for files being written" in r.json()["detail"]


def test_only_this_servers_host_names_are_answered(server):
    """DNS rebinding: a page at evil.example re-pointed to 127.0.0.1 sends Host: evil.example."""
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example"):
        r = server.client.get("/health", headers={"Host": host})
        assert r.status_code == 421, host
    for host in ("127.0.0.1", server.url.removeprefix("http://"), "localhost:1", "[::1]:80"):
        assert server.client.get("/health", headers={"Host": host}).status_code == 200, host


def _random_value(rng, depth=0):
    """A JSON value of a random type: text (with odd code points), numbers (NaN, huge),
    booleans, null, lists, objects."""
    kind = rng.integers(0, 8 if depth < 2 else 5)
    if kind == 0:
        alphabet = ["a", "/", "..", "\x00", "\udcff", "é", "\u202e", " ", "*", ".tmp", "~", "\\", "%00", "runs"]
        return "".join(rng.choice(alphabet, size=int(rng.integers(0, 12))).tolist()) * int(rng.choice([1, 1, 40]))
    if kind == 1:
        return float(rng.choice([0.0, -5.0, 1e308, float("nan"), float("inf"), 2.5]))
    if kind == 2:
        return int(rng.choice([0, -1, 2**31, 2**63 - 1, 7]))
    if kind == 3:
        return bool(rng.integers(0, 2))
    if kind == 4:
        return None
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    return {str(_random_value(rng, 2)): _random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}


def test_fuzz_jobs_and_files_never_answer_5xx_nor_stop_the_worker(server):
    """Random bodies for POST /jobs and random paths for GET/PUT /files (bounded sizes, loopback):
    never a 5xx, GET /jobs always answers 200, and the worker still runs jobs afterwards."""
    rng = np.random.default_rng(20)
    kinds = ["validate", "render", "segment", "complete", "run", "nope", 3, None]
    for i in range(150):
        body = {"kind": kinds[int(rng.integers(0, len(kinds)))], "scene": _random_value(rng),
                "run": _random_value(rng), "options": _random_value(rng)}
        for k in list(body):
            if rng.random() < 0.15:
                del body[k]
        if rng.random() < 0.1:
            body = _random_value(rng)
        text = json.dumps(body, allow_nan=True)
        r = server.client.post("/jobs", content=text.encode("utf-8", "surrogatepass"),
                               headers={"content-type": "application/json"})
        assert r.status_code < 500, (body, r.text)
        path = str(_random_value(rng)).lstrip("/") or "x"
        safe = path.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        r = server.client.get(f"/files/{safe}")
        assert r.status_code < 500, (safe, r.text)
        r = server.client.put(f"/files/fuzz/{safe}", content=bytes(int(rng.integers(0, 64))))
        assert r.status_code < 500, (safe, r.text)
        if i % 25 == 0:
            assert server.client.get("/jobs").status_code == 200
    r = server.client.get("/jobs")
    assert r.status_code == 200
    for job in r.json()["jobs"]:  # let what the fuzz queued finish, then the worker takes a real job
        if job["state"] in ("queued", "running"):
            server.client.post(f"/jobs/{job['id']}/cancel")
    assert server.wait(server.submit("validate", "small", "runs/after-fuzz"), timeout=60)["state"] == "done"
