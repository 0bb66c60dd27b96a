"""The model zoo: tiny pretrained models shipped with the course, loaded with the real
`from_pretrained`.

    pipe = load_pipeline("tiny-sd")                 # a diffusers StableDiffusionPipeline
    pipe = load_pipeline("tiny-controlnet")         # StableDiffusionControlNetPipeline (tiny-sd + ControlNet)
    dit = load_pipeline("tiny-dit")                 # helpers.dit.TinyDiT (PixArt transformer + tiny-sd parts)
    pipe = load_pipeline("tiny-sd3")                # a diffusers StableDiffusion3Pipeline (flow matching, no T5)

Each model is a diffusers-format folder under `helpers/assets/<name>/` with safetensors
weights, a model card (README.md) and a checksum manifest (`checksums.sha256`). Loading
verifies every checksum first, and explains what is wrong when a file is missing, truncated
or is a Git LFS pointer instead of the weights.

Pointing the same code at another model: set `DIFFUSION_LABS_MODEL_TINY_SD` (the name in
upper case, "-" as "_") to a local diffusers folder or to a Hub model id such as
"stable-diffusion-v1-5/stable-diffusion-v1-5" (needs network and, in practice, a GPU). Such
a model is loaded as it is, without a checksum manifest. `DIFFUSION_LABS_MODEL_TINY_CONTROLNET`
and `DIFFUSION_LABS_MODEL_TINY_DIT` do the same for the models that stand on tiny-sd's parts.

tiny-controlnet (a ControlNetModel) and tiny-dit (a PixArtTransformer2DModel) were trained
on one particular tiny-sd: each records the sha256 of the tiny-sd files it depends on
(train_info.json "base"), and loading refuses a mismatch (`check_base`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
MANIFEST = "checksums.sha256"
PIPELINES = {"tiny-sd": "StableDiffusionPipeline", "tiny-sd3": "StableDiffusion3Pipeline"}
LFS_HEADER = b"version https://git-lfs.github.com/spec/"
WEIGHTS_BUDGET = 45e6  # bytes of safetensors in helpers/assets/ all together (DESIGN.md, Budgets)


class ZooError(RuntimeError):
    """A zoo model is missing, damaged or not what its manifest says."""


def env_var(name: str) -> str:
    """The environment variable that redirects model `name`: tiny-sd -> DIFFUSION_LABS_MODEL_TINY_SD."""
    return "DIFFUSION_LABS_MODEL_" + name.upper().replace("-", "_")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Write `checksums.sha256` (sha256sum format) over every file of `folder` but itself."""
    folder = Path(folder)
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        lines.append(f"{sha256(path)}  {path.relative_to(folder).as_posix()}")
    out = folder / MANIFEST
    out.write_text("\n".join(lines) + "\n")
    return out


def verify(folder: str | Path) -> None:
    """Check every file listed in the folder's manifest; raise ZooError saying what is wrong."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise ZooError(f"{folder}: no {MANIFEST}; is this a zoo model folder? "
                       f"Rebuild it with `python -m helpers.train {folder.name}`.")
    problems = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        digest, rel = line.split(maxsplit=1)
        path = folder / rel
        if not path.exists():
            problems.append(f"{rel}: missing")
            continue
        with open(path, "rb") as f:
            head = f.read(len(LFS_HEADER))
        if head == LFS_HEADER:
            problems.append(f"{rel}: is a Git LFS pointer, not the file itself "
                            "(run `git lfs pull`, or download the repository as a zip)")
        elif sha256(path) != digest:
            problems.append(f"{rel}: checksum differs from the manifest "
                            f"({path.stat().st_size} bytes; truncated or modified?)")
    if problems:
        raise ZooError(f"zoo model at {folder} is damaged:\n  " + "\n  ".join(problems))


def model_path(name: str) -> str:
    """Where model `name` is loaded from: the override setting, else the shipped folder."""
    override = os.environ.get(env_var(name))
    if override:
        return override
    folder = ASSETS / name
    if not folder.exists():
        raise ZooError(f"unknown or missing zoo model {name!r}: no folder {folder}. "
                       f"Known: {sorted(p.name for p in ASSETS.iterdir() if p.is_dir())}")
    return str(folder)


def load_pipeline(name: str = "tiny-sd", device=None, dtype=None, **kwargs):
    """Load zoo pipeline `name` with diffusers' own `from_pretrained`.

    device: "cpu", "cuda", a torch.device or None (CUDA when available, else CPU).
    dtype: torch dtype of the weights (None: float32).
    Shipped models are checksum-verified first; an override (see module docstring) is not.
    """
    import diffusers
    import torch

    if name in OTHER_LOADERS:                      # tiny-controlnet, tiny-dit: see below
        return globals()[OTHER_LOADERS[name]](device=device, dtype=dtype)
    path = model_path(name)
    if not os.environ.get(env_var(name)):
        verify(path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cls = getattr(diffusers, PIPELINES.get(name, "DiffusionPipeline"))
    if Path(path).exists():
        kwargs.setdefault("local_files_only", True)
    if cls is diffusers.StableDiffusionPipeline:
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    if cls is diffusers.StableDiffusion3Pipeline:      # tiny-sd3 has no T5 (SD3's documented way to drop it)
        kwargs.setdefault("text_encoder_3", None)
        kwargs.setdefault("tokenizer_3", None)
    pipe = cls.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ---------------------------------------------------------------------------------------
# tiny-controlnet and tiny-dit: models that stand on tiny-sd's components
# ---------------------------------------------------------------------------------------

OTHER_LOADERS = {  # zoo models that stand on tiny-sd's components: load_pipeline(name) calls
    "tiny-controlnet": "load_controlnet_pipeline",
    "tiny-dit": "load_dit",
    "tiny-ip-adapter": "load_ip_adapter_pipeline",
}
BASE_FILES = {  # the tiny-sd files each model was trained against
    "tiny-controlnet": ("unet/diffusion_pytorch_model.safetensors",
                        "text_encoder/model.safetensors", "tokenizer/vocab.json"),
    "tiny-dit": ("vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "tokenizer/vocab.json"),
    "tiny-sd3": ("vae/diffusion_pytorch_model.safetensors",   # copied into its own folder: provenance only
                 "text_encoder/model.safetensors", "tokenizer/vocab.json"),
    "tiny-ip-adapter": ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                        "text_encoder/model.safetensors", "tokenizer/vocab.json"),
}


def control_image(mask):
    """A shape mask as tiny-controlnet's control image: (B, 1, H, W) or (1, H, W) {0, 1}
    -> float32 (B, 3, H, W) or (3, H, W) in [0, 1] (white shape on black, 3 channels like
    the segmentation and canny maps of the public ControlNets)."""
    m = mask.float()
    return m.expand(*m.shape[:-3], 3, *m.shape[-2:]).contiguous()


def _manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {}
    return {rel: digest for digest, rel in
            (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())}


def base_record(base: str | Path, model: str | None = None) -> dict:
    """What a model trained on the tiny-sd folder `base` records about it: the sha256 of
    the base files it depends on (BASE_FILES), so a later tiny-sd can be told apart."""
    base = Path(base)
    files = sorted({f for fs in BASE_FILES.values() for f in fs}) if model is None else BASE_FILES[model]
    return {"name": "tiny-sd", "sha256": {f: sha256(base / f) for f in files if (base / f).exists()}}


def check_base(name: str, folder: str | Path, base: str | Path) -> None:
    """Raise ZooError when zoo model `name` (at `folder`) was trained on a different tiny-sd
    than the one at `base` (its weights would not fit: a ControlNet adds residuals to one
    particular UNet; a DiT denoises one particular VAE's latents)."""
    import json

    info_path = Path(folder) / "train_info.json"
    if not info_path.exists():
        return
    recorded = json.loads(info_path.read_text()).get("base", {}).get("sha256", {})
    current = _manifest(base)
    stale = [f for f in BASE_FILES[name] if f in recorded and f in current and recorded[f] != current[f]]
    if stale:
        raise ZooError(f"{name} at {folder} was trained on another tiny-sd (differs in {stale}); "
                       f"retrain it with `python -m helpers.train {name}`.")


def _device(device):
    import torch
    return device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")


def _local_or_verified(name: str) -> tuple[str, bool]:
    """(path or model id, shipped?) of zoo model `name`; a shipped folder is verified."""
    path = model_path(name)
    shipped = not os.environ.get(env_var(name))
    if shipped:
        verify(path)
    return path, shipped


def load_controlnet(device=None, dtype=None, **kwargs):
    """tiny-controlnet as a diffusers `ControlNetModel` (checksum-verified, and checked to
    belong to the shipped tiny-sd). `DIFFUSION_LABS_MODEL_TINY_CONTROLNET` points it at
    another ControlNet folder or Hub id (e.g. "lllyasviel/sd-controlnet-seg" together with
    `DIFFUSION_LABS_MODEL_TINY_SD` set to a Stable Diffusion v1.5 model)."""
    import torch
    from diffusers import ControlNetModel

    path, shipped = _local_or_verified("tiny-controlnet")
    if shipped and not os.environ.get(env_var("tiny-sd")):
        check_base("tiny-controlnet", path, model_path("tiny-sd"))
    if Path(path).exists():
        kwargs.setdefault("local_files_only", True)
    model = ControlNetModel.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    return model.to(_device(device)).eval()


def load_controlnet_pipeline(device=None, dtype=None):
    """A diffusers `StableDiffusionControlNetPipeline`: tiny-sd's VAE, text encoder,
    tokenizer, UNet and scheduler with tiny-controlnet.

        pipe = load_controlnet_pipeline()
        image = pipe("a large red circle at the top left", image=control_image(mask)).images[0]
    """
    from diffusers import StableDiffusionControlNetPipeline

    sd = load_pipeline("tiny-sd", device=device, dtype=dtype)
    controlnet = load_controlnet(device=device, dtype=dtype)
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        controlnet=controlnet, scheduler=sd.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(_device(device))


def load_dit(device=None, dtype=None):
    """tiny-dit with the tiny-sd parts it needs, as a `helpers.dit.TinyDiT` (transformer,
    vae, text_encoder, tokenizer, scheduler; callable like a pipeline, see helpers/dit.py).
    The transformer is a diffusers `PixArtTransformer2DModel` loaded from
    `<folder>/transformer`; `DIFFUSION_LABS_MODEL_TINY_DIT` points at another folder of
    the same layout (transformer/, scheduler/)."""
    import diffusers
    import torch
    from diffusers import PixArtTransformer2DModel

    from helpers.dit import TinyDiT

    path, shipped = _local_or_verified("tiny-dit")
    if shipped and not os.environ.get(env_var("tiny-sd")):
        check_base("tiny-dit", path, model_path("tiny-sd"))
    kwargs = {"local_files_only": True} if Path(path).exists() else {}
    transformer = PixArtTransformer2DModel.from_pretrained(path, subfolder="transformer",
                                                           dtype=dtype or torch.float32, **kwargs)
    sched_cfg = diffusers.DDPMScheduler.load_config(path, subfolder="scheduler", **kwargs)
    scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    sd = load_pipeline("tiny-sd", device=device, dtype=dtype)
    return TinyDiT(transformer=transformer.eval(), vae=sd.vae, text_encoder=sd.text_encoder,
                   tokenizer=sd.tokenizer, scheduler=scheduler).to(_device(device))


IP_ADAPTER_LAYOUT = {"subfolder": "models", "weight_name": "ip-adapter_tiny-sd.safetensors"}  # h94/IP-Adapter's


def load_ip_adapter_pipeline(device=None, dtype=None, folder=None):
    """tiny-sd's `StableDiffusionPipeline` with tiny-ip-adapter loaded by diffusers' own
    `pipe.load_ip_adapter(folder, subfolder="models", weight_name=...)`, which also loads the
    image encoder (`models/image_encoder`) and builds the feature extractor:

        pipe = load_ip_adapter_pipeline()
        pipe.set_ip_adapter_scale(0.8)
        image = pipe("a red circle", ip_adapter_image=reference_pil).images[0]

    folder: another folder of the same layout (default: the shipped one, checksum-verified
    and checked to belong to the shipped tiny-sd; `DIFFUSION_LABS_MODEL_TINY_IP_ADAPTER`
    redirects it, e.g. to "h94/IP-Adapter" with `DIFFUSION_LABS_MODEL_TINY_SD` set to SD 1.5,
    whose weight_name is then "ip-adapter_sd15.safetensors")."""
    if folder is None:
        path, shipped = _local_or_verified("tiny-ip-adapter")
        if shipped and not os.environ.get(env_var("tiny-sd")):
            check_base("tiny-ip-adapter", path, model_path("tiny-sd"))
    else:
        path = str(folder)
    pipe = load_pipeline("tiny-sd", device=device, dtype=dtype)
    kwargs = {"local_files_only": True} if Path(path).exists() else {}
    weight_name = IP_ADAPTER_LAYOUT["weight_name"] if Path(path).exists() else "ip-adapter_sd15.safetensors"
    pipe.load_ip_adapter(path, subfolder=IP_ADAPTER_LAYOUT["subfolder"], weight_name=weight_name, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(_device(device))


# ---------------------------------------------------------------------------------------
# tiny-pixel (Lab 11): a class-conditional pixel-space UNet2DModel, and its variants
# ---------------------------------------------------------------------------------------

PIXEL_MODELS = ("tiny-pixel", "tiny-pixel-linear", "tiny-pixel-sqrt", "tiny-pixel-minsnr", "tiny-pixel-eps")


def load_pixel(name: str = "tiny-pixel", device=None, dtype=None, folder=None):
    """A pixel-space zoo model as (diffusers `UNet2DModel`, `DDPMScheduler`), checksum-verified
    (`folder`: a trained folder instead, unverified). The weights are stored in float16 and
    loaded as `dtype` (default float32). Sample with `helpers.evaluate.sample_pixel`.
    `DIFFUSION_LABS_MODEL_TINY_PIXEL` (etc.) points a name at another folder of the same layout."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    if folder is None:
        folder, _ = _local_or_verified(name)
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype or torch.float32,
                                       local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    return unet.to(_device(device)).eval(), scheduler
