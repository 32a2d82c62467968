"""Settle objects on a table with pybullet, pushed together so that they touch.

Objects are dropped, staggered in height, over a small disc and drawn towards its
centre during the first half of the simulation; the table is the plane z = 0. The
result (world poses) is deterministic for a given seed (DIRECT mode, fixed steps).
"""

from __future__ import annotations

import numpy as np

from .objects import SceneObject

GRAVITY = 9.81
STEPS = 720  # 3 s at pybullet's default 240 Hz


def settle(objects: list[SceneObject], rng: np.random.Generator) -> list[np.ndarray]:
    """World poses (4x4, object local -> world) of `objects` resting on the table."""
    import pybullet as pb

    cid = pb.connect(pb.DIRECT)
    try:
        pb.setGravity(0, 0, -GRAVITY, physicsClientId=cid)
        table = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=[2, 2, 0.05], physicsClientId=cid)
        pb.createMultiBody(0, table, basePosition=[0, 0, -0.05], physicsClientId=cid)
        sizes = np.array([float(np.max(o.mesh.extents)) for o in objects])
        spread = 0.4 * sizes.mean() * np.sqrt(len(objects))
        bodies = []
        z = 0.0
        for o, size in zip(objects, sizes):
            shape = pb.createCollisionShape(pb.GEOM_MESH, vertices=o.mesh.vertices.tolist(), physicsClientId=cid)
            r, a = spread * np.sqrt(rng.random()), 2 * np.pi * rng.random()
            z += 0.6 * size
            q = rng.normal(size=4)
            q /= np.linalg.norm(q)
            body = pb.createMultiBody(
                baseMass=0.1,
                baseCollisionShapeIndex=shape,
                basePosition=[r * np.cos(a), r * np.sin(a), z],
                baseOrientation=[q[1], q[2], q[3], q[0]],  # pybullet: x, y, z, w
                physicsClientId=cid,
            )
            pb.changeDynamics(body, -1, lateralFriction=0.8, rollingFriction=0.02, spinningFriction=0.01,
                              linearDamping=0.3, angularDamping=0.3,
                              physicsClientId=cid)
            bodies.append(body)
        for step in range(STEPS):
            if step < 3 * STEPS // 4:  # gather the pile so that objects touch and occlude
                for b in bodies:
                    pos, _ = pb.getBasePositionAndOrientation(b, physicsClientId=cid)
                    pull = -2.0 * np.array([pos[0], pos[1], 0.0])
                    pb.applyExternalForce(b, -1, pull.tolist(), pos, pb.WORLD_FRAME, physicsClientId=cid)
            pb.stepSimulation(physicsClientId=cid)
        poses = []
        for b in bodies:
            pos, orn = pb.getBasePositionAndOrientation(b, physicsClientId=cid)
            M = np.eye(4)
            M[:3, :3] = np.array(pb.getMatrixFromQuaternion(orn)).reshape(3, 3)
            M[:3, 3] = pos
            poses.append(M)
        return poses
    finally:
        pb.disconnect(cid)
