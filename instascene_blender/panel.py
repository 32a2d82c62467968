"""The 3D-view sidebar panel (N panel, tab "InstaScene")."""

from __future__ import annotations

import bpy

from .blender import jobs
from .io.service import FINAL_STATES

_CONN_ICONS = {"CONNECTED": "CHECKMARK", "CONNECTING": "SORTTIME", "OFFLINE": "CANCEL", "ERROR": "ERROR",
               "UNKNOWN": "UNLINKED"}


class VIEW3D_PT_instascene(bpy.types.Panel):
    bl_idname = "VIEW3D_PT_instascene"
    bl_label = "InstaScene"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "InstaScene"

    def draw(self, context):
        layout = self.layout
        st = context.window_manager.instascene
        settings = context.scene.instascene

        box = layout.box()
        box.label(text="Backend", icon="NETWORK_DRIVE")
        row = box.row()
        row.label(text=st.bl_rna.properties["connection"].enum_items[st.connection].name,
                  icon=_CONN_ICONS.get(st.connection, "QUESTION"))
        if st.connection_message:
            box.label(text=st.connection_message[:80])
        row = box.row(align=True)
        row.operator("instascene.connect", icon="LINKED")
        row.operator("instascene.start_backend", icon="PLAY")

        box = layout.box()
        box.label(text="Scene", icon="SCENE_DATA")
        box.operator("instascene.import_scene", icon="IMPORT")
        box.prop(settings, "scene_path", text="Scene")
        box.prop(settings, "run_dir", text="Run")

        box = layout.box()
        box.label(text="Objects", icon="OUTLINER_OB_GROUP_INSTANCE")
        off = jobs.unavailable(context)
        has_scene = bool(settings.scene_path)
        col = box.column(align=True)
        if not has_scene:
            col.label(text="Import a scene first (Scene above)", icon="INFO")
        row = col.row(align=True)
        row.enabled = "segment" not in off and has_scene
        row.operator("instascene.segment", icon="MOD_EXPLODE")
        row = col.row(align=True)
        row.enabled = "complete" not in off and bool(settings.run_dir or has_scene)
        row.operator("instascene.complete", text="Complete All", icon="MOD_REMESH").selected_only = False
        row.operator("instascene.complete", text="Selected").selected_only = True
        row = col.row(align=True)
        row.enabled = "run" not in off and has_scene
        row.operator("instascene.run", icon="FF")
        row = col.row(align=True)
        row.operator("instascene.materialize", icon="OUTLINER_COLLECTION")
        row.operator("instascene.select_at_cursor", text="Select at Cursor", icon="PIVOT_CURSOR")
        for kind, reason in sorted(off.items()):
            if kind in ("segment", "complete", "run"):
                col.label(text=f"{kind}: {reason}"[:80], icon="INFO")

        if st.job_kind or st.job_state:
            box = layout.box()
            box.label(text=f"Job {st.job_id or '…'}: {st.job_kind} {st.job_state}", icon="SORTTIME")
            text = jobs.progress_text(st)
            if hasattr(box, "progress"):
                box.progress(factor=st.progress, type="BAR", text=text)
            else:
                box.prop(st, "progress", text=st.stage or "Progress", slider=True)
            if st.message:
                box.label(text=st.message[:80])
            if st.job_state not in FINAL_STATES:
                box.operator("instascene.cancel", icon="X")
        if st.last_error:
            layout.label(text=st.last_error[:80], icon="ERROR")

        box = layout.box()
        box.label(text="Display and Export", icon="EXPORT")
        row = box.row(align=True)
        row.operator("instascene.set_display", text="Discs").mode = "DISCS"
        row.operator("instascene.set_display", text="Points").mode = "POINTS"
        box.operator("instascene.export_layout", icon="EXPORT")


CLASSES = (VIEW3D_PT_instascene,)
