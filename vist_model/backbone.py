"""Frozen image backbones that turn movie frames into a grid of feature vectors.

Vi-ST reads DINOv2 patch tokens: each greyscale frame is replicated to RGB,
resized to 224 x 224, normalised with ImageNet statistics and passed through a
frozen `transformers.Dinov2Model`; the CLS token is dropped and the 256 patch
tokens (patch 14 -> 16 x 16 grid) are returned as `[C, 16, 16]` per frame.

Backbones (`load_backbone(name_or_path)`):

* `dinov2-small` / `-base` / `-large` / `-giant` (C = 384 / 768 / 1024 / 1536;
  the paper uses `dinov2-large`): weights come from a local folder written by
  `save_pretrained`, or from the Hugging Face hub cache. Nothing is downloaded
  (`local_files_only=True`); if the weights are not on disk a
  `BackboneUnavailableError` says how to get them or to use `tiny`.
* a path to a local folder holding any DINOv2 checkpoint.
* `tiny`: a randomly initialised 2-layer DINOv2 (C = 32), seeded, for tests and
  demos; it has the real architecture and data flow but no visual prior. Its LayerNorms
  have `layer_norm_eps = 1`: at random initialisation the patch embedding dwarfs the
  position embedding, and with the default 1e-6 each token was normalised to the sign of
  its patch's luminance against grey (uniform patches at 0.0 and 0.4 gave the same token),
  so a twin could not tell a faint stimulus from a full-contrast one. With eps 1 the tokens
  of uniform patches are linear in luminance (docs/benchmarks.md).
* `pixels`: no ViT at all (the paper's "without foundation model" ablation).
  The normalised greyscale image is average-pooled onto the 16 x 16 grid giving
  C = 2 channels per cell: mean luminance, and local RMS contrast
  `sqrt(mean(x^2) - mean(x)^2)` within the cell.
* `patches`: `pixels` without the pooling's loss: each grid cell's luminance on a 4 x 4
  sub-grid, as 16 channels (space to depth, as a ViT's patch embedding before its
  projection), plus the cell's RMS contrast: C = 17. A receptive field smaller than a grid
  cell (2 px on a 64-px screen, whose grid cells are 4 px) keeps its centre and surround apart.

All backbones are frozen (`requires_grad=False`, always in eval mode) but stay
differentiable w.r.t. the input frames, so a stimulus can be optimised through
them: resizing uses bilinear interpolation with `antialias=False`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stimuli.errors import InputError, InsilicoError

__all__ = [
    "BACKBONE_PRESETS",
    "Backbone",
    "BackboneSpec",
    "BackboneUnavailableError",
    "DinoV2Backbone",
    "PatchBackbone",
    "PixelBackbone",
    "load_backbone",
]

IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_SEED = 0
TINY_LAYER_NORM_EPS = 1.0
# Without pretrained DINOv2 weights on the machine, the backbone that kept the most of the cells'
# drive, linearly at their RFs, on the family's tuning members, and trained the better Vi-ST on
# a report member (docs/benchmarks.md, "What the backbone keeps").
DEFAULT_BACKBONE = "pixels"


class BackboneUnavailableError(InsilicoError, FileNotFoundError):
    """The requested backbone's weights are not on this machine."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is and what it produces.

    Attributes:
        name: preset name (`dinov2-large`, `tiny`, `pixels`) or the local path given.
        source: hub id, local folder, or a short description for non-loaded backbones.
        pretrained: whether the weights carry a learned visual prior.
        hidden_size: feature channels C.
        grid: feature grid side (16 for 224 px input and patch 14).
    """

    name: str
    source: str
    pretrained: bool
    hidden_size: int
    grid: int

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Per-frame feature shape `(C, grid, grid)`."""
        return (self.hidden_size, self.grid, self.grid)


BACKBONE_PRESETS: dict[str, BackboneSpec] = {
    "dinov2-small": BackboneSpec("dinov2-small", "facebook/dinov2-small", True, 384, 16),
    "dinov2-base": BackboneSpec("dinov2-base", "facebook/dinov2-base", True, 768, 16),
    "dinov2-large": BackboneSpec("dinov2-large", "facebook/dinov2-large", True, 1024, 16),
    "dinov2-giant": BackboneSpec("dinov2-giant", "facebook/dinov2-giant", True, 1536, 16),
    "tiny": BackboneSpec("tiny", f"random Dinov2Config(hidden 32, 2 layers, layer_norm_eps "
                                 f"{TINY_LAYER_NORM_EPS:g}), seed {TINY_SEED}", False, 32, 16),
    "pixels": BackboneSpec("pixels", "average-pooled luminance and contrast", False, 2, 16),
    "patches": BackboneSpec("patches", "luminance on a 4 x 4 sub-grid of each grid cell, and its contrast",
                            False, 17, 16),
}


# (older, newer) substrings of Dinov2Model parameter names across transformers releases.
DINOV2_RENAMES = (
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
)


class Backbone(nn.Module):
    """Frozen per-frame feature extractor.

    Subclasses implement `_encode(images [n, 1, H, W] in [0, 1]) -> [n, C, g, g]`.
    """

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self._spec = spec

    @property
    def spec(self) -> BackboneSpec:
        return self._spec

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        # Frozen: stays in eval mode even when a parent module calls .train().
        return super().train(False)

    def load_weights(self, state: Mapping[str, Tensor]) -> None:
        """Load weights saved by `state_dict()`, possibly beside another transformers release.

        Releases name Dinov2's attention projections differently (`attention.attention.query`
        in 5.17, `attention.q_proj` in 5.24), so a twin saved beside one release is renamed
        to the names of the release installed here.
        """
        own = set(self.state_dict())
        renamed = {}
        for key, tensor in state.items():
            if key not in own:
                key = next((k for old, new in DINOV2_RENAMES for k in (key.replace(old, new), key.replace(new, old))
                            if k in own), key)
            renamed[key] = tensor
        missing, unexpected = sorted(own - set(renamed)), sorted(set(renamed) - own)
        if missing or unexpected:
            raise InputError(
                f"backbone weights do not fit {self.spec.name!r} with the installed transformers: "
                f"{len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})")
        self.load_state_dict(renamed)

    def _encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, frames: Tensor) -> Tensor:
        """Features of every frame.

        Args:
            frames: `[B, T, H, W]` greyscale, float in [0, 1].

        Returns:
            `[B, T, C, grid, grid]`, differentiable w.r.t. `frames`.
        """
        if frames.ndim != 4:
            raise InputError(f"frames must be [B, T, H, W], got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise InputError(f"frames must be float in [0, 1], got dtype {frames.dtype}")
        b, t, h, w = frames.shape
        feats = self._encode(frames.reshape(b * t, 1, h, w))
        return feats.reshape(b, t, *feats.shape[1:])

    @torch.no_grad()
    def extract(self, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Features for a feature cache, without autograd.

        Args:
            frames: `[T, H, W]` uint8 greyscale movie.
            batch_size: frames per forward pass.

        Returns:
            `[T, C, grid, grid]` float32.
        """
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 3:
            raise InputError(
                "frames must be a uint8 numpy array [T, H, W], got "
                f"{type(frames).__name__} {getattr(frames, 'dtype', '')} "
                f"{getattr(frames, 'shape', '')}"
            )
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        c, g, _ = self.spec.feature_shape
        out = np.empty((frames.shape[0], c, g, g), dtype=np.float32)
        for start in range(0, frames.shape[0], batch_size):
            chunk = torch.from_numpy(frames[start : start + batch_size]).to(self.device)
            images = chunk.to(torch.float32).div_(255.0).unsqueeze(1)
            out[start : start + len(chunk)] = self._encode(images).float().cpu().numpy()
        return out


class DinoV2Backbone(Backbone):
    """DINOv2 patch tokens on a `grid x grid` lattice (CLS dropped)."""

    def __init__(self, spec: BackboneSpec, encoder: nn.Module) -> None:
        super().__init__(spec)
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def _encode(self, images: Tensor) -> Tensor:
        x = images.to(self.mean.dtype)
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(
                x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=False
            )
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        tokens = self.encoder(pixel_values=x).last_hidden_state[:, 1:, :]
        g = self.spec.grid
        if tokens.shape[1] != g * g:
            raise InputError(f"expected {g * g} patch tokens, got {tokens.shape[1]}")
        # Tokens are row-major over the patch grid.
        return tokens.reshape(-1, g, g, tokens.shape[-1]).permute(0, 3, 1, 2).contiguous()


class PixelBackbone(Backbone):
    """No-prior backbone: pooled luminance and local RMS contrast per grid cell (C = 2)."""

    # One mean/std for a grey image: the averages of ImageNet's channel values.
    LUMA_MEAN = float(np.mean(IMAGENET_MEAN))
    LUMA_STD = float(np.mean(IMAGENET_STD))
    EPS = 1e-6  # keeps d sqrt / d var finite on uniform cells

    def __init__(self, spec: BackboneSpec | None = None) -> None:
        super().__init__(spec or BACKBONE_PRESETS["pixels"])
        self.register_buffer("mean", torch.tensor(self.LUMA_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(self.LUMA_STD), persistent=False)
        self._freeze()

    def _encode(self, images: Tensor) -> Tensor:
        x = self._normalised(images)
        return torch.cat(self._pooled(x), dim=1)

    def _normalised(self, images: Tensor) -> Tensor:
        return (images.to(self.mean.dtype) - self.mean) / self.std

    def _pooled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean luminance and RMS contrast of each grid cell of normalised images, `[n, 1, g, g]` each."""
        g = self.spec.grid
        mean = F.adaptive_avg_pool2d(x, g)
        mean_sq = F.adaptive_avg_pool2d(x * x, g)
        return mean, torch.sqrt((mean_sq - mean * mean).clamp_min(0.0) + self.EPS)


class PatchBackbone(PixelBackbone):
    """`PixelBackbone` with each grid cell's luminance kept on a `SUB x SUB` sub-grid (C = SUB^2 + 1).

    The sub-grid is the screen average-pooled (or, on a screen smaller than `grid x SUB`,
    repeated) onto `grid * SUB` positions a side, then moved into channels (`pixel_unshuffle`),
    so channel `i * SUB + j` of a grid cell is the luminance of its sub-position `(i, j)`.
    """

    SUB = 4

    def __init__(self) -> None:
        super().__init__(BACKBONE_PRESETS["patches"])

    def _encode(self, images: Tensor) -> Tensor:
        x = self._normalised(images)
        fine = F.pixel_unshuffle(F.adaptive_avg_pool2d(x, self.spec.grid * self.SUB), self.SUB)
        return torch.cat((fine, self._pooled(x)[1]), dim=1)


def _tiny_encoder(layer_norm_eps: float) -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        image_size=IMAGE_SIZE,
        patch_size=14,
        layer_norm_eps=layer_norm_eps,
    )
    # Same weights on every call without touching the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return Dinov2Model(config)


def _pretrained_encoder(source: str) -> nn.Module:
    from transformers import Dinov2Model

    try:
        return Dinov2Model.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise BackboneUnavailableError(
            f"DINOv2 weights {source!r} are not on this machine (nothing is downloaded at run "
            "time). Point to a local folder saved with `Dinov2Model.save_pretrained(folder)`, "
            "pre-fill the Hugging Face cache on a connected machine, or use the 'tiny' "
            f"(random DINOv2) or 'pixels' backbone. Cause: {err}"
        ) from err


def load_backbone(name_or_path: str) -> Backbone:
    """A frozen backbone in eval mode.

    Args:
        name_or_path: a key of `BACKBONE_PRESETS`, a local DINOv2 folder, or a hub id
            present in the local Hugging Face cache.

    Raises:
        BackboneUnavailableError: pretrained weights are not on disk.
    """
    if name_or_path == "pixels":
        return PixelBackbone()
    if name_or_path == "patches":
        return PatchBackbone()
    if name_or_path == "tiny":
        return DinoV2Backbone(BACKBONE_PRESETS["tiny"], _tiny_encoder(TINY_LAYER_NORM_EPS))
    if name_or_path in BACKBONE_PRESETS:
        spec = BACKBONE_PRESETS[name_or_path]
        return DinoV2Backbone(spec, _pretrained_encoder(spec.source))
    if not Path(name_or_path).is_dir() and "/" not in name_or_path:
        raise InputError(
            f"unknown backbone {name_or_path!r}: use one of {sorted(BACKBONE_PRESETS)} "
            "or a local DINOv2 folder"
        )
    encoder = _pretrained_encoder(name_or_path)
    patch = int(encoder.config.patch_size)
    if IMAGE_SIZE % patch:
        raise InputError(f"patch size {patch} does not divide the {IMAGE_SIZE} px input")
    spec = BackboneSpec(
        name=name_or_path,
        source=str(name_or_path),
        pretrained=True,
        hidden_size=int(encoder.config.hidden_size),
        grid=IMAGE_SIZE // patch,
    )
    return DinoV2Backbone(spec, encoder)
