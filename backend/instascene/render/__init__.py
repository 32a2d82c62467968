"""The 2DGS rasterizer (gsplat-style functional API over the math core in surfels.py).

    g = Gaussians.from_splats(splats); view = View.from_camera(camera)
    out = rasterize(g, view, features=F)            # rgb, features, alpha, depth, median, normals
    c = contributions(g, view, "transmittance")     # tracked rasterization
    sets = c.mask_gaussians(label_map)              # every mask's Gaussians, one pass
    cache = ContributionCache.build(g, views)       # frozen weights: cache.render(i, F)
"""

from .cache import ContributionCache
from .rasterize import (
    CRITERIA,
    Contributions,
    MaskGaussians,
    RenderOutput,
    contributions,
    rasterize,
    resolve_backend,
)
from .surfels import Gaussians, View, project

__all__ = [
    "CRITERIA",
    "ContributionCache",
    "Contributions",
    "Gaussians",
    "MaskGaussians",
    "RenderOutput",
    "View",
    "contributions",
    "project",
    "rasterize",
    "resolve_backend",
]
