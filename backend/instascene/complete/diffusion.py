"""Zero123-family novel-view diffusion generator for in-situ completion (issue 5).

A Zero-1-to-3 model (UNet in 8 / out 4, SD-1 VAE, CLIP ViT image encoder, one camera
Linear) is loaded with core `diffusers` classes from a local weights folder; nothing is
downloaded. Several known ring views condition one denoising run per target view:

* every condition k gives a CLIP image token (projected together with the relative
  pose target-vs-k) and a VAE latent concatenated to the UNet input (Zero123 convention:
  the latent distribution's mode, without the scaling factor);
* per step the guided noise predictions of the conditions are averaged (weighted by how
  close the condition looks at the object from the target's direction) or the
  conditions take turns;
* during the first `warp_fraction` of the steps, latent cells of each target that show
  observed surface are replaced by the latent of the nearest condition view that sees
  the same surface point (warped through the rendered depth), noised to the next
  timestep. This keeps the observed part where it is and lets the model fill the rest.

`build_tiny_weights` writes a small randomly initialised model in the same layout so the
whole path runs offline in tests.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InstaSceneError
from .generator import GeneratedViews, GenerationTask, StepProgress

try:
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.utils import is_accelerate_available
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
except ImportError as e:  # optional extra
    raise ImportError(
        f"the diffusion generator needs `diffusers` and `transformers` ({e}); pip install 'instascene[diffusion]'"
    ) from e

try:  # transformers 5 without torchvision: the PIL backend, imported directly (no fallback warning)
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4
    from transformers import CLIPImageProcessor

# What a weights folder must hold: subfolder -> (config file, needs a weights file)
PARTS = {
    "unet": ("config.json", True),
    "vae": ("config.json", True),
    "image_encoder": ("config.json", True),
    "feature_extractor": ("preprocessor_config.json", False),
    "scheduler": ("scheduler_config.json", False),
}
# The camera Linear: our name (and kxic's) first, then threestudio/bennyguo's.
PROJECTION_DIRS = ("cc_projection", "clip_camera_projection")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


# ----------------------------------------------------------------- modules


class CameraProjection(ModelMixin, ConfigMixin):
    """Zero123's "cc_projection": CLIP image embedding ⊕ 4-D relative pose -> one token."""

    @register_to_config
    def __init__(self, embedding_dim: int = 768, pose_dim: int = 4):
        super().__init__()
        self.proj = torch.nn.Linear(embedding_dim + pose_dim, embedding_dim)

    def forward(self, image_embeds: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """[B, D] embeds, [B, 4] poses -> [B, 1, D] encoder hidden states."""
        return self.proj(torch.cat([image_embeds, pose.to(image_embeds.dtype)], -1))[:, None]

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> "CameraProjection":
        """Load our own layout or a published one (kxic `CCProjection`: in_channel 772 ->
        out_channel 768, keys `projection.*`; threestudio `CLIPCameraProjection`: keys `proj.*`;
        a bare Linear: `weight`/`bias`)."""
        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        if "out_channel" in cfg:
            dim, pose_dim = int(cfg["out_channel"]), int(cfg["in_channel"]) - int(cfg["out_channel"])
        else:
            dim = int(cfg.get("embedding_dim", 768))
            pose_dim = int(cfg.get("pose_dim", cfg.get("additional_embeddings", 4)))
        state = _load_state_dict(_weights_file(folder))
        renamed = {}
        for key, value in state.items():
            leaf = key.rsplit(".", 1)[-1]
            if leaf in ("weight", "bias"):
                renamed[f"proj.{leaf}"] = value
        model = cls(embedding_dim=dim, pose_dim=pose_dim)
        model.load_state_dict(renamed, strict=True)
        model.proj.to(dtype)  # the Linear itself: ModelMixin.to(dtype) warns about fp32 modules
        return model


class Zero123Pipeline(DiffusionPipeline):
    """The modules of a Zero-1-to-3 model; `save_pretrained` / `from_pretrained(local_files_only=True)`
    round-trip. The sampling loop lives in `DiffusionGenerator` (it needs the task's geometry)."""

    model_cpu_offload_seq = "image_encoder->cc_projection->unet->vae"

    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor, cc_projection):
        super().__init__()
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            unet=unet,
            scheduler=scheduler,
            feature_extractor=feature_extractor,
            cc_projection=cc_projection,
        )

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Image size the UNet was built for (Zero123: 32 latents x 8 = 256 px)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor


# ----------------------------------------------------------------- loading


def _weights_file(folder: Path) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    files.sort(key=lambda p: not p.name.endswith(".safetensors"))  # prefer safetensors
    return files[0] if files else None


def _load_state_dict(path: Path) -> dict:
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_weights_dir(weights_dir) -> tuple[Path, Path]:
    """The folder and its camera-projection subfolder, or an InstaSceneError listing what is missing."""
    folder = Path(weights_dir)
    hint = (
        " (expected a diffusers Zero123 folder: model_index.json and subfolders "
        + ", ".join([*PARTS, PROJECTION_DIRS[0]])
        + "; e.g. a local copy of kxic/zero123-xl-diffusers, or build_tiny_weights() for tests)"
    )
    if not folder.exists():
        raise InstaSceneError("diffusion weights folder does not exist" + hint, folder)
    if not folder.is_dir():
        raise InstaSceneError("diffusion weights must be a folder, not a file" + hint, folder)
    missing = [] if (folder / "model_index.json").is_file() else ["model_index.json"]
    for part, (config, needs_weights) in PARTS.items():
        sub = folder / part
        if not sub.is_dir():
            missing.append(f"{part}/")
        elif not (sub / config).is_file():
            missing.append(f"{part}/{config}")
        elif needs_weights and _weights_file(sub) is None:
            missing.append(f"{part}/ weights (*.safetensors or *.bin)")
    proj = next((folder / d for d in PROJECTION_DIRS if (folder / d).is_dir()), None)
    if proj is None:
        missing.append(f"{PROJECTION_DIRS[0]}/ (the camera projection Linear)")
    elif not (proj / "config.json").is_file():
        missing.append(f"{proj.name}/config.json")
    elif _weights_file(proj) is None:
        missing.append(f"{proj.name}/ weights (*.safetensors or *.bin)")
    if missing:
        raise InstaSceneError("incomplete diffusion weights folder, missing: " + ", ".join(missing) + hint, folder)
    return folder, proj


def _load_part(folder: Path, part: str, load):
    try:
        return load(folder / part)
    except InstaSceneError:
        raise
    except Exception as e:  # bad json, corrupt weights, wrong shapes: the folder's fault
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InstaSceneError(f"cannot load {part}: {first}", folder / part) from None


def _load_scheduler(path: Path):
    name = json.loads((path / "scheduler_config.json").read_text()).get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not all(hasattr(cls, m) for m in ("scale_model_input", "step", "add_noise")):
        raise InstaSceneError(
            f"scheduler class {name!r} is not a diffusers scheduler with scale_model_input/step/add_noise;"
            " set _class_name in scheduler_config.json to e.g. DDIMScheduler",
            path,
        )
    return cls.from_pretrained(path, local_files_only=True)


def _check_compatible(pipe: Zero123Pipeline, folder: Path) -> None:
    """Shapes that must agree for a Zero123 model, as one clear error instead of a matmul failure."""
    latent = int(pipe.vae.config.latent_channels)
    unet, dim = pipe.unet.config, int(pipe.cc_projection.config.embedding_dim)
    problems = []
    if int(unet.in_channels) != 2 * latent or int(unet.out_channels) != latent:
        problems.append(
            f"unet in/out channels {unet.in_channels}/{unet.out_channels}, expected {2 * latent}/{latent}"
            " (noisy latent + condition latent in, noise out)"
        )
    if int(unet.cross_attention_dim) != dim:
        problems.append(f"unet cross_attention_dim {unet.cross_attention_dim} != camera projection dim {dim}")
    if int(pipe.image_encoder.config.projection_dim) != dim:
        problems.append(f"image_encoder projection_dim {pipe.image_encoder.config.projection_dim} != {dim}")
    if int(pipe.cc_projection.config.pose_dim) != 4:
        problems.append(f"camera projection pose_dim {pipe.cc_projection.config.pose_dim}, expected 4")
    if problems:
        raise InstaSceneError("not a Zero123 model: " + "; ".join(problems), folder)


def load_pipeline(weights_dir, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Zero123Pipeline:
    """Load a Zero123 model from a local folder, part by part with known classes, so both our
    own `save_pretrained` output and published layouts (whose model_index.json names remote
    code) load without network access or `trust_remote_code`."""
    folder, proj = _check_weights_dir(weights_dir)
    kw = dict(local_files_only=True)
    dkw = dict(kw, low_cpu_mem_usage=is_accelerate_available())  # without accelerate: no warning per part
    pipe = Zero123Pipeline(
        vae=_load_part(folder, "vae", lambda p: AutoencoderKL.from_pretrained(p, torch_dtype=dtype, **dkw)),
        image_encoder=_load_part(
            folder, "image_encoder", lambda p: CLIPVisionModelWithProjection.from_pretrained(p, **kw).to(dtype)
        ),
        unet=_load_part(folder, "unet", lambda p: UNet2DConditionModel.from_pretrained(p, torch_dtype=dtype, **dkw)),
        scheduler=_load_part(folder, "scheduler", _load_scheduler),
        feature_extractor=_load_part(folder, "feature_extractor", lambda p: CLIPImageProcessor.from_pretrained(p, **kw)),
        cc_projection=_load_part(folder, proj.name, lambda p: CameraProjection.from_folder(p, dtype)),
    )
    _check_compatible(pipe, folder)
    for module in (pipe.vae, pipe.image_encoder, pipe.unet, pipe.cc_projection):
        module.eval().requires_grad_(False)
    return pipe.to(device)


# ----------------------------------------------------------------- tiny weights


def build_tiny_weights(path: str | os.PathLike, image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny randomly initialised Zero123 folder (a few MB, seconds) that `load_pipeline`
    reads back: VAE factor 2, UNet for image_size/2 latents, 2-layer CLIP, DDIM."""
    if image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
    dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=image_size,
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 2,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=dim,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=dim,
                intermediate_size=37,
                projection_dim=dim,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            )
        )
        cc_projection = CameraProjection(embedding_dim=dim)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = Zero123Pipeline(vae, image_encoder, unet, scheduler, feature_extractor, cc_projection)
    pipe.save_pretrained(path)
    return Path(path)


# ----------------------------------------------------------------- geometry


def _camera_centres(w2c: torch.Tensor) -> torch.Tensor:
    """[..., 4, 4] world-to-camera -> [..., 3] camera centres in world."""
    R, t = w2c[..., :3, :3], w2c[..., :3, 3]
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def _view_axes(w2c: torch.Tensor) -> torch.Tensor:
    """[..., 4, 4] -> [..., 3] unit viewing directions (OpenCV +z) in world."""
    return w2c[..., 2, :3]


def cell_pixels(size: int, cells: int) -> torch.Tensor:
    """Pixel index at the centre of each of `cells` latent cells along an image axis of `size` pixels."""
    return (((torch.arange(cells, dtype=torch.float64) + 0.5) * size / cells).floor().long()).clamp(max=size - 1)


def warp_to_view(
    depth_t,
    normals_t,
    w2c_t,
    depth_s,
    w2c_s,
    K,
    cells: tuple[int, int],
    *,
    known_t=None,
    depth_tol: float = 0.02,
    min_cos: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each latent cell of N target views lies in each of S source views.

    Per target cell the surface point is taken at the cell-centre pixel (depth_t, camera z;
    0 = no surface), back-projected and projected into every source. It is valid when it
    lands inside the source image in front of the camera, the source depth there agrees
    within depth_tol (relative: the point is not occluded), and the target normal faces
    both cameras by more than min_cos (grazing surfaces smear).

    depth_t [N,H,W], normals_t [N,H,W,3] (world), w2c_t [N,4,4]; depth_s [S,H,W], w2c_s [S,4,4];
    K [3,3]; known_t [N,H,W] bool optional (cells showing unobserved content are skipped).
    Returns uv [N,S,h,w,2] (source pixel coordinates, pixel centres at integers) and
    valid [N,S,h,w] bool.
    """
    f64 = dict(dtype=torch.float64)
    depth_t, normals_t, w2c_t = (torch.as_tensor(np.asarray(a), **f64) for a in (depth_t, normals_t, w2c_t))
    depth_s, w2c_s, K = (torch.as_tensor(np.asarray(a), **f64) for a in (depth_s, w2c_s, K))
    N, H, W = depth_t.shape
    h, w = cells
    rows, cols = cell_pixels(H, h), cell_pixels(W, w)
    z = depth_t[:, rows][:, :, cols]  # [N,h,w]
    n = normals_t[:, rows][:, :, cols]  # [N,h,w,3]
    has = z > 0
    if known_t is not None:
        has &= torch.as_tensor(np.asarray(known_t))[:, rows][:, :, cols].bool()

    # back-project the cell-centre pixels to world
    v, u = torch.meshgrid(rows.to(torch.float64), cols.to(torch.float64), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)  # [h,w,3]
    rays = pix @ torch.linalg.inv(K).T  # camera rays with z = 1
    Xc = rays[None] * z[..., None]  # [N,h,w,3]
    R, t = w2c_t[:, :3, :3], w2c_t[:, :3, 3]
    Xw = torch.einsum("nji,nhwj->nhwi", R, Xc - t[:, None, None])  # R^T (Xc - t)

    # project into every source
    Rs, ts = w2c_s[:, :3, :3], w2c_s[:, :3, 3]
    Xs = torch.einsum("sij,nhwj->nshwi", Rs, Xw) + ts[None, :, None, None]  # [N,S,h,w,3]
    zs = Xs[..., 2]
    proj = Xs @ K.T
    uv = proj[..., :2] / zs.clamp(min=1e-9)[..., None]
    Hs, Ws = depth_s.shape[1:]
    inside = (zs > 0) & (uv[..., 0] >= -0.5) & (uv[..., 0] < Ws - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] < Hs - 0.5)
    ui = uv[..., 0].round().long().clamp(0, Ws - 1)
    vi = uv[..., 1].round().long().clamp(0, Hs - 1)
    S = depth_s.shape[0]
    ds = depth_s[torch.arange(S)[None, :, None, None], vi, ui]  # source depth at the landing pixel
    visible = (ds > 0) & ((ds - zs).abs() < depth_tol * zs)

    # the surface must face both cameras
    def facing(centres, shape):
        d = centres.reshape(shape) - Xw.unsqueeze(1)
        return (n.unsqueeze(1) * d).sum(-1) / d.norm(dim=-1).clamp(min=1e-12)

    cos_t = facing(_camera_centres(w2c_t), (N, 1, 1, 1, 3))
    cos_s = facing(_camera_centres(w2c_s), (1, S, 1, 1, 3))
    valid = has[:, None] & inside & visible & (cos_t > min_cos) & (cos_s > min_cos)
    return uv, valid


@dataclass
class LatentWarp:
    """For each target latent cell: which condition it copies from and from which cell."""

    source: torch.Tensor  # [N,h,w] long, index into the condition list (-1 = no known content)
    cell: torch.Tensor  # [N,h,w] long, flat latent-cell index in that condition (0 where source < 0)

    @property
    def mask(self) -> torch.Tensor:
        return self.source >= 0

    def apply(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[K,C,h,w] condition latents -> warped [N,C,h,w] and mask [N,1,h,w] (float)."""
        K, C, h, w = z0.shape
        flat = z0.flatten(2).permute(0, 2, 1).reshape(K * h * w, C)  # [(K h w), C]
        src = self.source.clamp(min=0).to(z0.device)
        idx = src * (h * w) + self.cell.to(z0.device)
        warped = flat[idx].permute(0, 3, 1, 2)  # [N,C,h,w]
        mask = self.mask.to(z0.device, z0.dtype)[:, None]
        return warped * mask, mask


def plan_warp(task: GenerationTask, targets, conditions, cells: tuple[int, int], **kw) -> LatentWarp:
    """Nearest known view first: each target cell copies from the condition with the closest
    viewing direction among those that see its surface point (see `warp_to_view`)."""
    targets, conditions = list(targets), list(conditions)
    uv, valid = warp_to_view(
        task.depth[targets], task.normals[targets], task.world_to_camera[targets],
        task.depth[conditions], task.world_to_camera[conditions], task.K, cells,
        known_t=task.known[targets], **kw,
    )
    N, S, h, w = valid.shape
    axes = _view_axes(torch.as_tensor(np.asarray(task.world_to_camera), dtype=torch.float64))
    cos = axes[targets] @ axes[conditions].T  # [N,S]
    order = torch.argsort(-cos, dim=1, stable=True)
    ordered = torch.gather(valid, 1, order[:, :, None, None].expand(N, S, h, w))
    first = ordered.to(torch.uint8).argmax(1)  # first valid in nearest-first order
    source = torch.gather(order, 1, first.flatten(1)).reshape(N, h, w)
    any_valid = valid.any(1)
    H_img, W_img = task.depth.shape[1:3]
    uv_sel = torch.gather(uv, 1, source[:, None, :, :, None].expand(N, 1, h, w, 2))[:, 0]  # source pixel
    cx = ((uv_sel[..., 0] + 0.5) * w / W_img).floor().long().clamp(0, w - 1)  # its latent cell
    cy = ((uv_sel[..., 1] + 0.5) * h / H_img).floor().long().clamp(0, h - 1)
    source = torch.where(any_valid, source, torch.full_like(source, -1))
    cell = torch.where(any_valid, cy * w + cx, torch.zeros_like(cx))
    return LatentWarp(source=source, cell=cell)


def relative_poses(task: GenerationTask, targets, conditions) -> torch.Tensor:
    """[N,K,4] Zero123 relative camera [Δpolar (rad), sin Δaz, cos Δaz, Δradius] of each target
    seen from each condition. Polar = 90° − elevation; the ring has one radius, so Δradius = 0."""
    el = torch.as_tensor(np.asarray(task.elevation_deg, dtype=np.float64))
    az = torch.as_tensor(np.asarray(task.azimuth_deg, dtype=np.float64))
    t, c = list(targets), list(conditions)
    d_polar = torch.deg2rad(el[c][None, :] - el[t][:, None])
    d_az = torch.deg2rad(az[t][:, None] - az[c][None, :])
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), torch.zeros_like(d_az)], -1)


# ----------------------------------------------------------------- generator


@dataclass
class Conditioning:
    """Everything the denoising loop needs for one task, on the model's device."""

    tokens: torch.Tensor  # [K,N,1,D] camera-projected CLIP token of condition k for target n
    latents: torch.Tensor  # [K,C,h,w] condition latents for concatenation (unscaled)
    weights: torch.Tensor  # [N,K] averaging weights
    warped: torch.Tensor  # [N,C,h,w] known content warped into each target (scaled latents)
    mask: torch.Tensor  # [N,1,h,w] 1 where `warped` holds known content


class DiffusionGenerator:
    """Zero123-family generator: fills the target views of a `GenerationTask`.

    mode "average": every step runs each condition and averages the guided noise predictions
    (weights from the cosine between viewing directions, floored so no condition is ignored);
    "alternate": step i uses condition i mod K only (K times cheaper). warp_fraction: share of
    the steps during which observed content is re-imposed by latent replacement.
    """

    name = "diffusion"

    def __init__(
        self,
        weights_dir,
        *,
        steps: int = 50,
        guidance: float = 3.0,
        mode: str = "average",
        warp_fraction: float = 0.6,
        device: str = "auto",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        white_outside: bool = True,
    ):
        if mode not in ("average", "alternate"):
            raise InstaSceneError(f"diffusion mode must be 'average' or 'alternate', got {mode!r}")
        if int(steps) < 1:
            raise InstaSceneError(f"diffusion steps must be >= 1, got {steps}")
        if not 0.0 <= float(warp_fraction) <= 1.0:
            raise InstaSceneError(f"warp_fraction must be in [0, 1], got {warp_fraction}")
        if float(guidance) < 0:
            raise InstaSceneError(f"guidance must be >= 0, got {guidance}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.steps, self.guidance, self.mode = int(steps), float(guidance), mode
        self.warp_fraction, self.seed, self.white_outside = float(warp_fraction), int(seed), white_outside
        self.pipe = load_pipeline(weights_dir, self.device, dtype)
        self.dtype = dtype

    # -- conditioning

    def _model_images(self, images: np.ndarray) -> torch.Tensor:
        """[V,H,W,3] in [0,1] -> [V,3,R,R] in [-1,1] at the model's resolution."""
        x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32).permute(0, 3, 1, 2)
        r = self.pipe.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return (x.clamp(0, 1) * 2 - 1).to(self.device, self.dtype)

    @torch.no_grad()
    def prepare(self, task: GenerationTask) -> Conditioning:
        """CLIP tokens, concat latents, averaging weights and the warped known content."""
        pipe, cond, tgt = self.pipe, list(task.conditions), list(task.targets)
        if not cond:
            raise InstaSceneError("the diffusion generator needs at least one condition view")
        images = np.asarray(task.images[cond], dtype=np.float32)
        pixels = pipe.feature_extractor(
            images=list((images.clip(0, 1) * 255).round().astype(np.uint8)), return_tensors="pt"
        ).pixel_values
        embeds = pipe.image_encoder(pixels.to(self.device, self.dtype)).image_embeds  # [K,D]
        poses = relative_poses(task, tgt, cond).to(self.device, self.dtype)  # [N,K,4]
        N, K = len(tgt), len(cond)
        tokens = pipe.cc_projection(
            embeds[None].expand(N, K, -1).reshape(N * K, -1), poses.reshape(N * K, 4)
        ).reshape(N, K, 1, -1).transpose(0, 1)  # [K,N,1,D]
        latents = pipe.vae.encode(self._model_images(images)).latent_dist.mode()  # [K,C,h,w]

        axes = _view_axes(torch.as_tensor(np.asarray(task.world_to_camera), dtype=torch.float64))
        weights = (axes[tgt] @ axes[cond].T).clamp(min=0) + 0.05  # [N,K]

        h, w = latents.shape[-2:]
        warp = plan_warp(task, tgt, cond, (h, w))
        warped, mask = warp.apply(latents * pipe.vae.config.scaling_factor)
        return Conditioning(tokens, latents, weights.to(self.device, self.dtype), warped, mask)

    # -- sampling

    def _noise(self, shape, generator: torch.Generator) -> torch.Tensor:
        """Noise drawn on the CPU, so a seed gives the same result on every device."""
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)

    def _guided_eps(self, x: torch.Tensor, t, tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Classifier-free guided noise for one condition: tokens [N,1,D], latents [C,h,w]."""
        N = x.shape[0]
        concat = latents[None].expand(N, -1, -1, -1)
        if self.guidance == 1.0:  # guidance 1 is the conditional prediction alone
            return self.pipe.unet(torch.cat([x, concat], 1), t, encoder_hidden_states=tokens).sample
        inp = torch.cat([torch.cat([x, concat], 1), torch.cat([x, torch.zeros_like(concat)], 1)])
        eps = self.pipe.unet(inp, t, encoder_hidden_states=torch.cat([tokens, torch.zeros_like(tokens)])).sample
        eps_c, eps_u = eps.chunk(2)
        return eps_u + self.guidance * (eps_c - eps_u)

    def _seed(self, task: GenerationTask) -> int:
        return int(np.random.SeedSequence([self.seed, int(task.seed)]).generate_state(1)[0])

    @torch.no_grad()
    def denoise(self, task: GenerationTask, cond: Conditioning, progress: StepProgress | None = None) -> torch.Tensor:
        """The sampling loop; returns the final (scaled) latents [N,C,h,w]."""
        pipe, sched = self.pipe, self.pipe.scheduler
        generator = torch.Generator().manual_seed(self._seed(task))
        N, (C, h, w), K = cond.warped.shape[0], cond.latents.shape[1:], cond.latents.shape[0]
        sched.set_timesteps(self.steps, device=self.device)
        timesteps = sched.timesteps
        z = self._noise((N, C, h, w), generator) * sched.init_noise_sigma
        step_kw = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
        n_replace = self.warp_fraction * len(timesteps)
        weights = cond.weights / cond.weights.sum(1, keepdim=True)
        for i, t in enumerate(timesteps):
            x = sched.scale_model_input(z, t)
            if self.mode == "alternate":
                k = i % K
                eps = self._guided_eps(x, t, cond.tokens[k], cond.latents[k])
            else:
                eps = sum(
                    weights[:, k, None, None, None] * self._guided_eps(x, t, cond.tokens[k], cond.latents[k])
                    for k in range(K)
                )
            z = sched.step(eps, t, z, **step_kw).prev_sample
            if i < n_replace and i + 1 < len(timesteps):
                t_next = timesteps[i + 1].reshape(1).expand(N)
                known = sched.add_noise(cond.warped, self._noise((N, C, h, w), generator), t_next)
                z = cond.mask * known + (1 - cond.mask) * z
            if progress is not None:
                progress(i + 1, len(timesteps), f"diffusion step {i + 1}/{len(timesteps)}")
        return z

    @torch.no_grad()
    def decode(self, z: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Scaled latents -> [N,H,W,3] float32 images in [0,1] at the task's size."""
        x = self.pipe.vae.decode(z / self.pipe.vae.config.scaling_factor).sample.float()
        x = ((x + 1) / 2).clamp(0, 1)
        if x.shape[-2:] != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return x.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)

    def generate(self, task: GenerationTask, progress: StepProgress | None = None) -> GeneratedViews:
        """Images for task.targets, at the task's size, on white; alpha = the closed object's
        silhouette when `white_outside` (nothing is drawn past it)."""
        targets = list(task.targets)
        H, W = task.images.shape[1:3]
        if not targets:
            return GeneratedViews(views=[], images=np.zeros((0, H, W, 3), np.float32))
        cond = self.prepare(task)
        images = self.decode(self.denoise(task, cond, progress), (H, W))
        alpha = None
        if self.white_outside:  # the object cannot extend past the closed object's silhouette
            inside = np.asarray(task.completed_alpha[targets], dtype=bool)
            images = np.where(inside[..., None], images, np.float32(1.0))
            alpha = inside.astype(np.float32)
        return GeneratedViews(views=targets, images=images, alpha=alpha)
