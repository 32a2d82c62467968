"""The FastAPI application: routes of the service contract over the store and the worker.

Contract (contracts.md, kept; extended): GET /health (no token) · GET /capabilities ·
POST /jobs {"kind", "scene", "run", "options"} -> the job (with its "id") · GET /jobs ·
GET /jobs/{id} · POST /jobs/{id}/cancel · GET /jobs/{id}/log · PUT/GET /files/{path} ·
POST /query {"run", "point" | "view" + "pixel"} -> what a click selects (answered at once).
Errors are JSON {"detail": "<one clear line>"}; never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import InstaSceneError
from ..io.atomic import atomic_write, file_in_the_way
from . import jobs
from .capabilities import capabilities
from .security import JSON_BODY_LIMIT, DataRoots, Guard, PathRejected, _too_large
from .store import STATES, JobStore
from .worker import JobFinished, Worker

log = logging.getLogger(__name__)


@dataclass
class ServiceConfig:
    data_roots: list[Path]
    token: str
    state_dir: Path
    max_upload: int = 16 << 30
    weights: Path | None = None
    weights_source: str | None = None  # "--weights" or "INSTASCENE_WEIGHTS"
    hosts: tuple[str, ...] | None = None  # Host header names answered (None: any, for in-process tests)


# ---------------------------------------------------------------------- schema

MODEL_FOLDER_OPTIONS = ("weights", "sam_weights")  # job options naming a folder a model is loaded from


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal[jobs.KINDS] = Field(description="what to do; see GET /capabilities for the kinds available here")
    scene: str | None = Field(None, description="scene folder or PLY: absolute, or relative to the first data root")
    run: str = Field(description="run folder for the results: absolute, or relative to the first data root")
    options: dict[str, Any] = Field(default_factory=dict, description="kind-specific options")

    @model_validator(mode="after")
    def _unicode(self):
        unencodable_text(self.model_dump())
        return self


def unencodable_text(value, where: str = "") -> None:
    """Raise ValueError naming the first string in `value` that is not valid Unicode (JSON
    may carry a lone surrogate such as "\\udcff", which no file, log or answer can hold)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where or 'a value'} is not valid Unicode text (a lone surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            unencodable_text(k, f"{where}.{k!r} (a key)".lstrip(".") if isinstance(k, str) else where)
            unencodable_text(v, f"{where}.{k}".lstrip("."))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            unencodable_text(v, f"{where}[{i}]")


class Job(BaseModel):
    id: str
    kind: str
    state: Literal[STATES]
    progress: float = Field(description="0 to 1")
    stage: str
    message: str
    seconds_left: float | None = Field(None, description="time left, estimated from the time so far and the "
                                                         "progress; null until 2 % is done")
    scene: str | None
    run: str = Field(description="the run folder; its results are complete once state is 'done'")
    options: dict[str, Any]
    created: str
    started: str | None
    finished: str | None
    error: str | None
    result: dict[str, Any] | None
    cancel_requested: bool


class JobList(BaseModel):
    jobs: list[Job]


class JobLog(BaseModel):
    id: str
    lines: list[str]


class Health(BaseModel):
    status: str
    service: str
    version: str


class Upload(BaseModel):
    path: str
    size: int


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str = Field(description="segmentation run folder: absolute, or relative to the first data root")
    point: list[FiniteFloat] | None = Field(None, min_length=3, max_length=3,
                                            description="[x, y, z] in the scene's world coordinates")
    view: str | None = Field(None, description="camera name of the scene, for a pixel")
    pixel: list[int] | None = Field(None, min_length=2, max_length=2, description="[x, y] in `view`")
    threshold: float = Field(0.8, ge=-1.0, le=1.0, description="feature cosine for the similar set")
    max_distance: FiniteFloat | None = Field(None, gt=0, description="for a point: farthest Gaussian centre "
                                             "still selected; default a few times the median spacing")


class QueryAnswer(BaseModel):
    gaussian: int | None = Field(description="the Gaussian clicked; null: nothing there")
    instance: int | None = Field(description="its instance; -1: background; null: nothing there")
    instance_gaussians: int
    similar_gaussians: int = Field(description="Gaussians whose feature matches the clicked one")
    similar_instances: dict[str, int] = Field(description="instance (-1: background) -> similar Gaussians in it")


# ---------------------------------------------------------------------- app


def create_app(config: ServiceConfig) -> FastAPI:
    roots = DataRoots(config.data_roots)
    store = JobStore(config.state_dir)
    defaults = {"weights": str(config.weights)} if config.weights else {}
    worker = Worker(store, defaults)
    limits = {"json_body_bytes": JSON_BODY_LIMIT, "upload_bytes": config.max_upload}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop, 10.0)

    app = FastAPI(
        title="InstaScene backend",
        version=__version__,
        description="Segments 2D Gaussian Splatting scenes into objects. Every route but /health needs "
        "`Authorization: Bearer <token>` (the token is in the server's token file).",
        docs_url=None,  # the Swagger page cannot send the token, and loads scripts from the web
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.store, app.state.worker, app.state.roots = store, worker, roots

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})")
                continue
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(PathRejected)
    async def _rejected(request: Request, exc: PathRejected):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _crashed(request: Request, exc: Exception):
        print(f"instascene serve: {request.method} {request.url.path} crashed:\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server's log"},
                            status_code=500)

    def job_or_404(job_id: str) -> dict:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job with id {job_id!r}")
        return job

    # ------------------------------------------------------------------ routes
    @app.get("/health", response_model=Health, tags=["service"])
    def health():
        """Liveness, without a token: lets a client find out whether a backend is up."""
        return {"status": "ok", "service": "instascene", "version": __version__}

    @app.get("/capabilities", tags=["service"])
    def get_capabilities():
        """Device, versions, generator weights, job kinds, data roots and size limits."""
        return capabilities(config.weights, config.weights_source, roots.roots, limits)

    @app.post("/jobs", response_model=Job, status_code=202, tags=["jobs"])
    def submit(req: JobRequest):
        """Queue a job. Paths are checked now (403 outside the data roots, 404 missing scene);
        problems inside the files (a malformed PLY) make the job fail with a clear message."""
        why = jobs.unavailable_message(req.kind)
        if why is not None:
            raise HTTPException(501, why)
        scene = None
        if req.scene is not None or req.kind not in jobs.SCENE_OPTIONAL:
            if req.scene is None:
                raise HTTPException(400, f"a {req.kind} job needs a scene")
            scene = roots.resolve(req.scene, "scene")
            if not scene.exists():
                raise HTTPException(404, f"scene not found: {req.scene}")
        run = roots.resolve(req.run, "run folder")
        blocking = file_in_the_way(run)
        if blocking == run:
            raise HTTPException(400, f"run folder {req.run!r} exists and is not a folder")
        if blocking is not None:
            raise HTTPException(400, f"run folder {req.run!r} cannot be made: {blocking.name} is a file, not a folder")
        if run in roots.roots:
            raise HTTPException(400, "the run folder may not be a data root itself; name a folder inside it")
        try:
            jobs.check_options(req.kind, req.options)
        except InstaSceneError as e:
            raise HTTPException(422, f"invalid request: {e}") from None
        options = dict(req.options)
        for key in MODEL_FOLDER_OPTIONS:  # a model is loaded only from inside the data roots
            if options.get(key) is not None:
                folder = roots.resolve(options[key], f"options.{key}")
                if not folder.is_dir():
                    raise HTTPException(404, f"options.{key}: no such folder inside the data roots: {options[key]}")
                options[key] = str(folder)
        job = store.create(req.kind, str(scene) if scene else None, str(run), options)
        worker.submit(job["id"])
        return job

    @app.get("/jobs", response_model=JobList, tags=["jobs"])
    def list_jobs():
        """Every job this server knows, oldest first (finished ones survive restarts)."""
        return {"jobs": store.list()}

    @app.get("/jobs/{job_id}", response_model=Job, tags=["jobs"])
    def get_job(job_id: str):
        return job_or_404(job_id)

    @app.post("/jobs/{job_id}/cancel", response_model=Job, tags=["jobs"])
    def cancel(job_id: str):
        """A queued job is cancelled at once; a running one stops at its next step
        (its state turns 'cancelled' then). 409 when the job has already finished."""
        job_or_404(job_id)
        try:
            return worker.cancel(job_id)
        except JobFinished as e:
            raise HTTPException(409, str(e)) from None

    @app.get("/jobs/{job_id}/log", response_model=JobLog, tags=["jobs"])
    def job_log(job_id: str, tail: int = Query(200, ge=0, le=10000, description="how many last lines")):
        job_or_404(job_id)
        return {"id": job_id, "lines": store.log_tail(job_id, tail)}

    @app.post("/query", response_model=QueryAnswer, tags=["query"])
    def query(req: QueryRequest):
        """Click-to-select on a segmented run, answered at once (not a job; the run stays
        loaded for the next clicks). 400 for a folder that is no run, a bad view or pixel."""
        from ..segment.query import query_run, run_scene_path  # torch: imported on the first click only

        if (req.point is None) == (req.pixel is None):
            raise HTTPException(400, "give either 'point' [x, y, z] or 'view' and 'pixel' [x, y]")
        if req.pixel is not None and not req.view:
            raise HTTPException(400, "a 'pixel' needs a 'view' (a camera name of the scene)")
        run = roots.resolve(req.run, "run folder")
        if not run.is_dir():
            raise HTTPException(404, f"run folder not found: {req.run}")
        try:
            roots.resolve(str(run_scene_path(run)), "the run's scene")  # read only inside the roots
            return query_run(run, req.point, req.view, req.pixel, req.threshold, req.max_distance)
        except InstaSceneError as e:
            raise HTTPException(400, str(e)) from None

    @app.get("/files/{path:path}", tags=["files"])
    def download(path: str):
        """Stream a file out of a data root (e.g. RUN/instances/3/mesh.ply); a folder answers
        its listing as JSON. Paths: relative to the first data root, or absolute."""
        real = roots.resolve(path)
        if real.is_dir():
            entries = []
            for p in sorted(real.iterdir()):
                try:
                    p.name.encode("utf-8")
                    if _is_temporary(p) or not roots.contains(p.resolve()):
                        continue
                except (UnicodeEncodeError, OSError, RuntimeError):
                    continue  # a name no JSON answer can carry, a link loop: not listed
                entries.append({"name": p.name, "type": "folder" if p.is_dir() else "file",
                                "size": p.stat().st_size if p.is_file() else None})
            return {"path": str(real), "entries": entries}
        if not real.is_file() or _is_temporary(real):
            raise HTTPException(404, f"file not found: {path}")
        return FileResponse(real, filename=real.name)

    @app.put("/files/{path:path}", response_model=Upload, status_code=201, tags=["files"])
    async def upload(path: str, request: Request):
        """Stream the request body into a file inside a data root. It appears whole or not
        at all (temporary name, then rename); larger than the upload limit answers 413."""
        real = roots.resolve(path)
        if _is_temporary(real):
            raise HTTPException(400, f"{real.name!r}: names like .<name>.tmp are kept for files being written "
                                     "(they are never listed or served); choose another name")
        if real in roots.roots or real.is_dir():
            raise HTTPException(409, f"{path!r} is a folder; name a file")
        blocking = file_in_the_way(real.parent)
        if blocking is not None:
            raise HTTPException(409, f"cannot write {path!r}: {blocking} is a file, not a folder")
        size = 0
        try:
            with atomic_write(real) as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > config.max_upload:
                        raise HTTPException(413, _too_large(config.max_upload, True))
                    f.write(chunk)
        except ClientDisconnect:
            raise HTTPException(400, "the upload was cut off; nothing was written") from None
        except OSError as e:
            raise HTTPException(400, f"cannot write {path!r}: {e.strerror or e}") from None
        return {"path": str(real), "size": size}

    # ------------------------------------------------------------------ OpenAPI
    def openapi():
        """The default schema, plus the bearer token every route but /health needs."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for route, operations in schema.get("paths", {}).items():
                if route != "/health":
                    for op in operations.values():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Guard, token=config.token, upload_limit=config.max_upload, hosts=config.hosts)
    return app


def _is_temporary(p: Path) -> bool:
    """atomic_write's half-written files (.<name>.XXXX.tmp) are never served."""
    return p.name.startswith(".") and p.name.endswith(".tmp")
