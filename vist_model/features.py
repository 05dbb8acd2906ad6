"""Backbone features computed once per (backbone, video) and kept in HDF5.

Training, evaluation and fine-tuning all read features from here. The cache key joins a
fingerprint of the backbone (its spec and the bytes of its weights) with a hash of the frames'
content, so a changed backbone or a changed video can never be served stale features.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import torch
from rich.progress import Progress

# float16 halves the cache (a ViT-L frame is 1024 x 16 x 16 values); the twin's first layer is a
# 1x1x1 conv, for which half precision features are ample.
CACHE_DTYPE = np.float16


def default_cache_dir() -> Path:
    return Path(os.environ.get("INSILICO_CACHE", Path.home() / ".cache" / "insilico")) / "features"


def frames_hash(frames: np.ndarray) -> str:
    """Content hash of frames `[T, H, W]` uint8 (shape included)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((frames.shape, str(frames.dtype))).encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """Hash of a backbone's spec and weights: two backbones share cached features only if equal."""
    return state_fingerprint(getattr(backbone, "spec", type(backbone).__name__), backbone.state_dict())


def state_fingerprint(spec: object, state: Mapping[str, torch.Tensor]) -> str:
    """`backbone_fingerprint` of a spec and a state dict, as stored in a checkpoint."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(spec).encode())
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """A folder of `<backbone>-<frames>.h5` files, each holding `/features [T, C, h, w]`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path_for(self, backbone_key: str, video_key: str) -> Path:
        return self.root / f"{backbone_key[:16]}-{video_key[:16]}.h5"

    def features(
        self,
        backbone: torch.nn.Module,
        frames: np.ndarray,
        *,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        progress: Progress | None = None,
        fingerprint: str | None = None,
    ) -> np.ndarray:
        """Features `[T, C, h, w]` float32 of frames `[T, H, W]` uint8, computed at most once."""
        fingerprint = fingerprint or backbone_fingerprint(backbone)
        path = self.path_for(fingerprint, frames_hash(frames))
        if path.exists():
            with h5py.File(path, "r") as f:
                if f.attrs.get("backbone") == fingerprint and f["features"].shape[0] == len(frames):
                    return f["features"][()].astype(np.float32)
        feats = extract_features(backbone, frames, batch_size=batch_size, device=device, progress=progress)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=self.root)
        os.close(fd)
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["backbone"] = fingerprint
                f.attrs["spec"] = repr(getattr(backbone, "spec", ""))
                f.create_dataset("features", data=feats.astype(CACHE_DTYPE),
                                 chunks=(min(len(feats), 64), *feats.shape[1:]))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return feats.astype(CACHE_DTYPE).astype(np.float32)  # identical to what a cache hit returns


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module,
    frames: np.ndarray,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """Run the frozen backbone over frames `[T, H, W]` uint8 -> `[T, C, h, w]` float32."""
    backbone = backbone.to(device).eval()
    out: list[np.ndarray] = []
    task = progress.add_task("features", total=len(frames), status="") if progress else None
    for start in range(0, len(frames), batch_size):
        chunk = torch.from_numpy(frames[start:start + batch_size].astype(np.float32) / 255.0).to(device)
        feats = backbone(chunk[None])[0]  # [t, C, h, w]
        out.append(feats.float().cpu().numpy())
        if progress is not None:
            progress.update(task, advance=len(chunk))
    return np.concatenate(out)
