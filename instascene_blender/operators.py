"""Operators (`bpy.ops.instascene.*`): every panel button, callable from scripts without UI.

Errors are Blender reports (`self.report({'ERROR'}, msg)` + CANCELLED), which a script
sees as a RuntimeError. Backend operators start a worker thread and return at once;
progress arrives through blender/jobs.py.
"""

import atexit
import os
import threading

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from .blender import jobs
from .io import service
from .io.ply import PlyError
from .preferences import get_prefs, token_path

_USER_ERRORS = (PlyError, ValueError, OSError, service.ServiceError)

DISPLAY_ITEMS = [
    ("AUTO", "Auto", "Discs, or points in the viewport for scenes above the preview threshold"),
    ("DISCS", "Discs", "Oriented discs everywhere (exact look, slower viewport)"),
    ("POINTS", "Points in Viewport", "Light point preview in the viewport, discs in renders"),
    ("POINTS_ALWAYS", "Points Always", "Points in the viewport and in renders (fastest)"),
]


def _fail(op, msg: str):
    op.report({"ERROR"}, msg)
    return {"CANCELLED"}


class _FileOperator:
    """A file-browser operator (what bpy_extras' Import/ExportHelper do, without importing it)."""

    filepath: StringProperty(name="File Path", subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    default_name = ""

    def invoke(self, context, event):
        if not self.filepath and self.default_name:
            blend = bpy.data.filepath
            folder = os.path.dirname(blend) if blend else os.path.expanduser("~")
            self.filepath = os.path.join(folder, self.default_name)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


def _abspath(p: str) -> str:
    return os.path.abspath(bpy.path.abspath(p)) if p else ""


# ------------------------------------------------------------------ files
class INSTASCENE_OT_import_scene(_FileOperator, bpy.types.Operator):
    """Import a 2DGS/3DGS scene: a scene folder, a training output folder or a splat PLY; cameras too"""

    bl_idname = "instascene.import_scene"
    bl_label = "Import 2DGS Scene"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.ply;*.json", options={"HIDDEN"})  # cameras.json shows too
    display: EnumProperty(name="Display", items=DISPLAY_ITEMS, default="AUTO")
    import_cameras: BoolProperty(name="Cameras", default=True, description="Create the scene's cameras")
    standard_view: BoolProperty(name="Standard View Transform", default=True,
                                description="Set the scene's view transform to Standard so splats show their "
                                            "captured colours (AgX washes them out)")

    def draw(self, context):
        layout = self.layout
        col = layout.column(align=True)
        col.label(text="A scene folder: open it, leave the", icon="INFO")
        col.label(text="file name empty, press Import.")
        col.label(text="Or pick its point_cloud.ply or cameras.json.")
        layout.prop(self, "display")
        layout.prop(self, "import_cameras")
        layout.prop(self, "standard_view")

    def execute(self, context):
        from .blender.importer import import_scene

        path = _abspath(self.filepath)
        if not path:
            return _fail(self, "no scene given: pass filepath= a scene folder or a PLY file")
        if os.path.basename(path) == "cameras.json":  # picked in the file browser: the scene is its folder
            path = os.path.dirname(path)
        if not os.path.exists(path):
            return _fail(self, f"{path}: no such file or folder")
        prefs = get_prefs(context)
        try:
            res = import_scene(path, context.scene, display=self.display,
                               point_threshold=prefs.point_threshold, import_cameras=self.import_cameras,
                               standard_view=self.standard_view)
        except _USER_ERRORS as e:
            return _fail(self, str(e))
        context.scene.instascene.scene_path = res["scene_root"] if os.path.isdir(path) else res["ply"]
        for w in res["warnings"]:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"imported {res['count']} {res['kind']} splats and {len(res['cameras'])} cameras")
        return {"FINISHED"}


class INSTASCENE_OT_materialize(bpy.types.Operator):
    """Build one object per instance of a run folder (replacing an earlier result of the same run)"""

    bl_idname = "instascene.materialize"
    bl_label = "Materialize"
    bl_options = {"REGISTER", "UNDO"}

    run_dir: StringProperty(name="Run Folder", subtype="DIR_PATH", default="")
    display: EnumProperty(name="Display", items=DISPLAY_ITEMS, default="AUTO")
    mesh_in_render: BoolProperty(name="Meshes in Renders", default=False,
                                 description="Render the completed meshes too (else only their splats)")
    keep_moves: BoolProperty(name="Keep Moves", default=True,
                             description="Objects materialized before keep where you moved them (off: back to "
                             "where they were captured)")
    observed_background: BoolProperty(name="Observed Background", default=False,
                                      description="Show the background as the cameras saw it, with holes where "
                                      "the objects stood (else the completed one, when the run has it)")

    def execute(self, context):
        from .blender.materialize import materialize

        run = _abspath(self.run_dir) or _abspath(context.scene.instascene.run_dir) or \
            _abspath(context.window_manager.instascene.last_run)
        if not run:
            return _fail(self, "no run folder given: pass run_dir= a folder written by segment/complete")
        prefs = get_prefs(context)
        try:
            res = materialize(run, context.scene, display=self.display, point_threshold=prefs.point_threshold,
                              mesh_in_render=self.mesh_in_render, completed_background=not self.observed_background,
                              keep_moves=self.keep_moves)
        except _USER_ERRORS as e:
            return _fail(self, str(e))
        if res["skipped"]:
            self.report({"WARNING"}, f"instances without files skipped: {', '.join(res['skipped'][:10])}")
        self.report({"INFO"}, f"{'replaced' if res['replaced'] else 'materialized'} {len(res['instances'])} "
                              f"instances{' and the ' + res['background_kind'] + ' background' if res['background'] else ''}")
        return {"FINISHED"}


class INSTASCENE_OT_export_layout(_FileOperator, bpy.types.Operator):
    """Write every InstaScene splat object, with its world transform baked in, to one splat PLY"""

    # Means, rotations and scales are transformed exactly for rotation + uniform scale (and via
    # an SVD for other scales); SH bands 1-3 are all rotated exactly (io/transform.py).

    bl_idname = "instascene.export_layout"
    bl_label = "Export Layout"

    default_name = "layout.ply"
    visible_only: BoolProperty(name="Visible Only", default=False)
    selected_only: BoolProperty(name="Selected Only", default=False)

    def execute(self, context):
        from .blender.export import export_layout, splat_objects

        path = _abspath(self.filepath)
        if not path or os.path.isdir(path):
            return _fail(self, "no output file given: pass filepath= a .ply path")
        objs = splat_objects(context.scene, self.visible_only, self.selected_only)
        try:
            n = export_layout(path, objs)
        except _USER_ERRORS as e:
            return _fail(self, str(e))
        self.report({"INFO"}, f"wrote {n} splats from {len(objs)} objects to {path}")
        return {"FINISHED"}


class INSTASCENE_OT_set_display(bpy.types.Operator):
    """Draw the selected splat objects (all when none is selected) as discs or points"""

    bl_idname = "instascene.set_display"
    bl_label = "Splat Display"
    bl_options = {"REGISTER", "UNDO"}

    mode: EnumProperty(name="Display", items=DISPLAY_ITEMS[1:], default="DISCS")

    def execute(self, context):
        from .blender import nodes
        from .blender.splats import is_splat_object

        objs = [o for o in context.selected_objects if is_splat_object(o)] or \
            [o for o in context.scene.objects if is_splat_object(o)]
        for o in objs:
            nodes.add_splat_modifier(o, viewport_points=self.mode != "DISCS",
                                     always_points=self.mode == "POINTS_ALWAYS")
        self.report({"INFO"}, f"{len(objs)} objects drawn as {self.mode.lower().replace('_', ' ')}")
        return {"FINISHED"}


# ------------------------------------------------------------------ backend
def _client(context) -> service.Client:
    prefs = get_prefs(context)
    url = prefs.backend_url or service.DEFAULT_URL
    if not service.is_loopback(url) and not bpy.app.online_access:
        raise service.ServiceError("online access is disabled in Blender's preferences, and the backend "
                                   f"{url} is not on this machine")
    return service.Client(url, service.read_token(token_path(prefs)))


def default_run_dir(context) -> str:
    settings = context.scene.instascene
    if settings.run_dir:
        return _abspath(settings.run_dir)
    scene = _abspath(settings.scene_path)
    if not scene:
        return ""
    base = _abspath(get_prefs(context).data_folder) or os.path.dirname(scene.rstrip(os.sep))
    name = os.path.splitext(os.path.basename(scene.rstrip(os.sep)))[0]
    return os.path.join(base, "runs", name)


class INSTASCENE_OT_connect(bpy.types.Operator):
    """Check that the backend answers (health and capabilities)"""

    bl_idname = "instascene.connect"
    bl_label = "Connect"

    def execute(self, context):
        try:
            client = _client(context)
        except _USER_ERRORS as e:
            return _fail(self, str(e))
        context.window_manager.instascene.connection = "CONNECTING"
        jobs.MANAGER.start(service.check_connection, client, jobs.MANAGER.queue)
        return {"FINISHED"}


class INSTASCENE_OT_start_backend(bpy.types.Operator):
    """Start the local backend with the interpreter set in the preferences, then connect"""

    bl_idname = "instascene.start_backend"
    bl_label = "Start Backend"

    def execute(self, context):
        prefs = get_prefs(context)
        proc = jobs.MANAGER.process
        if proc is not None and proc.poll() is None:
            return _fail(self, f"the backend started from Blender is already running (pid {proc.pid})")
        tfile = token_path(prefs)
        log = os.path.join(bpy.app.tempdir or os.path.expanduser("~"), "instascene-backend.log")
        try:
            client = _client(context)
            data_root = _abspath(prefs.data_folder) or None
            jobs.MANAGER.process = service.start_backend(bpy.path.abspath(prefs.backend_python),
                                                         client.url, data_root, tfile, log)
            atexit.register(stop_backend)  # a backend started from Blender ends with it
        except _USER_ERRORS as e:
            return _fail(self, str(e))
        context.window_manager.instascene.connection = "CONNECTING"
        context.window_manager.instascene.connection_message = f"starting (log: {log})"
        jobs.MANAGER.start(service.wait_until_up, client, jobs.MANAGER.process, jobs.MANAGER.queue, tfile,
                           jobs.MANAGER.stop)
        return {"FINISHED"}


class _JobOperator:
    kind = "segment"

    def job_options(self, context) -> dict:
        return {}

    def execute(self, context):
        st = context.window_manager.instascene
        if st.job_id and st.job_state in ("queued", "running") and jobs.MANAGER.busy():
            return _fail(self, f"job {st.job_id} ({st.job_kind}) is still running; cancel it first")
        reason = jobs.unavailable(context).get(self.kind)
        if reason:
            return _fail(self, f"the backend cannot {self.kind}: {reason}")
        scene = _abspath(context.scene.instascene.scene_path)
        run = default_run_dir(context)
        if self.kind != "complete" and not scene:
            return _fail(self, "no scene: import a scene first (or set the scene path in the panel)")
        if not run:
            return _fail(self, "no run folder: set one in the panel")
        try:
            client = _client(context)
            options = self.job_options(context)
        except _USER_ERRORS as e:
            return _fail(self, str(e))
        context.scene.instascene.run_dir = run
        st.job_id, st.job_kind, st.job_state, st.progress, st.stage, st.message, st.last_error = \
            "", self.kind, "submitting", 0.0, "", "", ""
        jobs.MANAGER.start(service.run_job, client, self.kind, scene or None, run, options, jobs.MANAGER.queue,
                           jobs.MANAGER.stop)
        self.report({"INFO"}, f"{self.kind} submitted to the backend")
        return {"FINISHED"}


class INSTASCENE_OT_segment(_JobOperator, bpy.types.Operator):
    """Segment the imported scene into instances (a backend job)"""

    bl_idname = "instascene.segment"
    bl_label = "Segment"
    kind = "segment"


class INSTASCENE_OT_complete(_JobOperator, bpy.types.Operator):
    """Complete the instances of the run (all, or the selected ones) and mesh them (a backend job)"""

    bl_idname = "instascene.complete"
    bl_label = "Complete"
    kind = "complete"

    selected_only: BoolProperty(name="Selected Only", default=False,
                                description="Complete only the instances whose objects are selected")

    def job_options(self, context) -> dict:
        if not self.selected_only:
            return {}
        ids = sorted({str(o["instascene_instance"]) for o in context.selected_objects
                      if "instascene_instance" in o})
        if not ids:
            raise ValueError("no materialized instance is selected")
        return {"instances": ids}


class INSTASCENE_OT_run(_JobOperator, bpy.types.Operator):
    """Segment and complete in one backend job"""

    bl_idname = "instascene.run"
    bl_label = "Segment + Complete"
    kind = "run"


def _cancel_worker(client, job_id, out):
    try:
        client.cancel(job_id)
        out.put({"type": "cancel", "message": "cancel requested"})
    except service.ServiceError as e:  # the job itself may still run: not a job failure
        out.put({"type": "cancel", "message": f"cancel failed: {e}", "failed": True})


class INSTASCENE_OT_cancel(bpy.types.Operator):
    """Cancel the running backend job"""

    bl_idname = "instascene.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        st = context.window_manager.instascene
        if not st.job_id or st.job_state in service.FINAL_STATES:
            return _fail(self, "no job is running")
        try:
            client = _client(context)
        except _USER_ERRORS as e:
            return _fail(self, str(e))
        jobs.MANAGER.start(_cancel_worker, client, st.job_id, jobs.MANAGER.queue)
        return {"FINISHED"}


QUERY_TIMEOUT = 10.0  # s; a query answers in well under a second once the backend has the run loaded


def _rest_matrices(run, coll) -> list:
    """(object, matrix it was materialized with) for the run's objects: instances sit at
    their centroid (scene coordinates minus centroid inside), the background at the origin."""
    from mathutils import Matrix

    from .io.run_folder import instance_centroid

    centroids = {r.id: instance_centroid(r) for r in run.instances
                 if r.centroid is not None or (r.bbox_min is not None and r.bbox_max is not None)}
    out = []
    for obj in coll.all_objects:
        iid = obj.get("instascene_instance")
        if iid is not None and str(iid) in centroids:
            out.append((obj, Matrix.Translation([float(v) for v in centroids[str(iid)]])))
        elif obj.get("instascene_background"):
            out.append((obj, Matrix.Identity(4)))
    return out


def scene_point(cursor, run, coll):
    """The 3D cursor in the segmented scene's coordinates. The import applies no transform,
    so they are Blender's world coordinates, unless the cursor is on a run object the user
    has moved: then it is carried back with that object (the smallest one whose padded
    bounding box holds it), so a click on a moved instance still finds it."""
    from mathutils import Vector

    cursor = Vector(cursor)
    best, best_size = cursor, None
    for obj, rest in _rest_matrices(run, coll):
        try:
            local = obj.matrix_world.inverted() @ cursor
        except ValueError:  # scaled to zero
            continue
        corners = [Vector(c) for c in obj.bound_box]
        lo = Vector([min(c[i] for c in corners) for i in range(3)])
        hi = Vector([max(c[i] for c in corners) for i in range(3)])
        pad = 0.1 * max(hi - lo) + 1e-4
        if all(lo[i] - pad <= local[i] <= hi[i] + pad for i in range(3)):
            size = (hi - lo).length
            if best_size is None or size < best_size:
                best, best_size = rest @ local, size
    return best


def _instance_object(coll, iid: str):
    """The materialized object `instance_<id>` (not its `_splats` child)."""
    for obj in coll.all_objects:
        if str(obj.get("instascene_instance")) == iid and \
                (obj.parent is None or str(obj.parent.get("instascene_instance")) != iid):
            return obj
    return None


class INSTASCENE_OT_select_at_cursor(bpy.types.Operator):
    """Select the materialized instance under the 3D cursor by asking the backend (POST /query).

    A direct, blocking call with a QUERY_TIMEOUT timeout, not a worker thread: a query
    answers in well under a second (the backend keeps the run loaded), so a click
    should select at once; only the first query of a large run waits while it loads.
    """

    bl_idname = "instascene.select_at_cursor"
    bl_label = "Select Instance at Cursor"
    bl_description = "Select the materialized instance at the 3D cursor (asks the backend)"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        from .blender.materialize import find_run_collection
        from .io.run_folder import read_run_folder

        path = _abspath(context.scene.instascene.run_dir) or _abspath(context.window_manager.instascene.last_run)
        if not path:
            return _fail(self, "no run folder: set one in the panel (a segmented, materialized run)")
        try:
            run = read_run_folder(path)
            coll = find_run_collection(run.root)
            if coll is None:
                return _fail(self, f"run {run.name} is not materialized in this file: Materialize it first")
            point = scene_point(context.scene.cursor.location, run, coll)
            answer = _client(context).query(run.root, point=tuple(point), timeout=QUERY_TIMEOUT)
        except _USER_ERRORS as e:
            return _fail(self, str(e))
        inst = answer.get("instance")
        if inst is None:
            self.report({"INFO"}, "nothing there: no Gaussian near the 3D cursor")
            return {"FINISHED"}
        if int(inst) < 0:
            self.report({"INFO"}, "background: the 3D cursor is on the background (table, floor, walls)")
            return {"FINISHED"}
        obj = _instance_object(coll, str(inst))
        if obj is None:
            return _fail(self, f"instance {inst} has no object in {coll.name} (materialize the run again)")
        try:
            for o in context.view_layer.objects:
                o.select_set(False)
            obj.select_set(True)
        except RuntimeError as e:  # hidden from, or not in, the view layer
            return _fail(self, f"cannot select {obj.name}: {e}")
        context.view_layer.objects.active = obj
        others = sorted(k for k in (answer.get("similar_instances") or {}) if k not in (str(inst), "-1"))
        also = f"; similar features also in instances {', '.join(others)}" if others else ""
        self.report({"INFO"}, f"selected {obj.name} ({answer.get('instance_gaussians', '?')} Gaussians{also})")
        return {"FINISHED"}


def stop_backend() -> None:
    """Terminate the backend this session started (only that process)."""
    proc = jobs.MANAGER.process
    if proc is not None and proc.poll() is None:
        proc.terminate()
        threading.Thread(target=proc.wait, daemon=True).start()
    jobs.MANAGER.process = None


def menu_import(self, context):
    self.layout.operator(INSTASCENE_OT_import_scene.bl_idname, text="InstaScene 2DGS Scene (.ply / folder)")


def menu_export(self, context):
    self.layout.operator(INSTASCENE_OT_export_layout.bl_idname, text="InstaScene Splat Layout (.ply)")


CLASSES = (
    INSTASCENE_OT_import_scene, INSTASCENE_OT_materialize, INSTASCENE_OT_export_layout,
    INSTASCENE_OT_set_display, INSTASCENE_OT_connect, INSTASCENE_OT_start_backend,
    INSTASCENE_OT_segment, INSTASCENE_OT_complete, INSTASCENE_OT_run, INSTASCENE_OT_cancel,
    INSTASCENE_OT_select_at_cursor,
)
