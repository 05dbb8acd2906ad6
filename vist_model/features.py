"""Backbone features computed once per (backbone, video) and kept in HDF5.

Training, evaluation and fine-tuning all read features from here. The cache key joins a
fingerprint of the backbone (its spec and the bytes of its weights) with a hash of the frames'
content, so a changed backbone or a changed video can never be served stale features.

Nothing here holds a movie or its features whole: frames are hashed and run through the
backbone a batch at a time, each batch's features are written to the file as they come, and
`CachedFeatures` reads back only the frames it is sliced for. An hour of DINOv2-large
features (53 GiB in float16) is read a window at a time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import torch
from rich.progress import Progress

from stimuli.errors import InputError
from stimuli.files import atomic_path

# float16 halves the cache (a ViT-L frame is 1024 x 16 x 16 values); the twin's first layer is a
# 1x1x1 conv, for which half precision features are ample.
CACHE_DTYPE = np.float16
# Frames hashed per read: a few MiB of pixels whatever the recording's length.
HASH_FRAMES = 256
# HDF5 chunk of the cache: about this many bytes (8 ViT-L frames, 256 `tiny` ones), so a
# 128-frame training window reads little more than itself.
CHUNK_BYTES = 4 << 20


class FrameSource(Protocol):
    """Frames `[T, H, W]` uint8 indexed by frame: a numpy array or `vist_model.data.RecordingFrames`."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> np.ndarray: ...


def default_cache_dir() -> Path:
    return Path(os.environ.get("INSILICO_CACHE", Path.home() / ".cache" / "insilico")) / "features"


def frames_hash(frames: FrameSource) -> str:
    """Content hash of frames `[T, H, W]` uint8 (shape included), read `HASH_FRAMES` at a time.

    The digest is that of the whole array's bytes, so a cache written from frames in memory is
    found again from the same frames read lazily from a recording.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(int(n) for n in frames.shape), str(frames.dtype))).encode())
    for start in range(0, len(frames), HASH_FRAMES):
        h.update(np.ascontiguousarray(frames[start:start + HASH_FRAMES]).tobytes())
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


class CachedFeatures:
    """Features `[T, C, h, w]` in a cache file, read as float32 only where sliced.

    `features[a:b]` reads frames a..b-1 (what a cache hit and a fresh extraction both give:
    the float16 values, widened). The file is opened on first read, once per process, and is
    never pickled, so a DataLoader worker opens its own.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            self.shape: tuple[int, ...] = tuple(int(n) for n in f["features"].shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if isinstance(index, slice) and index.step not in (None, 1):
            raise IndexError("cached features are read in contiguous ranges (slice step 1)")
        return self._dataset()[index].astype(np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _dataset(self) -> h5py.Dataset:
        held = self.__dict__.get("_open_file")
        if held is None or held[0] != os.getpid():
            held = (os.getpid(), h5py.File(self.path, "r"))
            self._open_file = held
        return held[1]["features"]

    def close(self) -> None:
        held = self.__dict__.pop("_open_file", None)
        if held is not None and held[0] == os.getpid():
            held[1].close()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_open")}


class FeatureCache:
    """A folder of `<backbone>-<frames>.h5` files, each holding `/features [T, C, h, w]`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path_for(self, backbone_key: str, video_key: str) -> Path:
        return self.root / f"{backbone_key[:16]}-{video_key[:16]}.h5"

    def features(
        self,
        backbone: torch.nn.Module,
        frames: FrameSource,
        *,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        progress: Progress | None = None,
        fingerprint: str | None = None,
    ) -> CachedFeatures:
        """Features `[T, C, h, w]` of frames `[T, H, W]` uint8, computed at most once.

        Frames are read, hashed and run through the backbone `batch_size` at a time and each
        batch's features go straight to the float16 file, so neither the movie nor its
        features are ever whole in memory; the result reads from that file per slice.
        """
        if len(frames) == 0:
            raise InputError("no frames to extract features from (T = 0)")
        fingerprint = fingerprint or backbone_fingerprint(backbone)
        path = self.path_for(fingerprint, frames_hash(frames))
        if path.exists():
            with h5py.File(path, "r") as f:
                hit = f.attrs.get("backbone") == fingerprint and f["features"].shape[0] == len(frames)
            if hit:
                return CachedFeatures(path)
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["backbone"] = fingerprint
                f.attrs["spec"] = repr(getattr(backbone, "spec", ""))
                dataset = None
                for start, feats in iter_features(backbone, frames, batch_size=batch_size, device=device,
                                                  progress=progress):
                    if dataset is None:  # the first batch tells the feature shape
                        frame_bytes = int(np.prod(feats.shape[1:])) * np.dtype(CACHE_DTYPE).itemsize
                        chunk = max(1, min(len(frames), CHUNK_BYTES // frame_bytes))
                        dataset = f.create_dataset("features", shape=(len(frames), *feats.shape[1:]),
                                                   dtype=CACHE_DTYPE, chunks=(chunk, *feats.shape[1:]))
                    dataset[start:start + len(feats)] = feats.astype(CACHE_DTYPE)
        return CachedFeatures(path)


@torch.no_grad()
def iter_features(
    backbone: torch.nn.Module,
    frames: FrameSource,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """`(start, features [t, C, h, w] float32)` of frames `[T, H, W]` uint8, `batch_size` at a time."""
    backbone = backbone.to(device).eval()
    task = progress.add_task("features", total=len(frames), status="") if progress else None
    for start in range(0, len(frames), batch_size):
        pixels = np.asarray(frames[start:start + batch_size])
        chunk = torch.from_numpy(pixels.astype(np.float32) / 255.0).to(device)
        yield start, backbone(chunk[None])[0].float().cpu().numpy()  # [t, C, h, w]
        if progress is not None:
            progress.update(task, advance=len(chunk))


def extract_features(
    backbone: torch.nn.Module,
    frames: FrameSource,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """Run the frozen backbone over frames `[T, H, W]` uint8 -> `[T, C, h, w]` float32, in memory.

    For a short clip; `FeatureCache.features` streams a long movie to disk instead.
    """
    out: np.ndarray | None = None
    for start, feats in iter_features(backbone, frames, batch_size=batch_size, device=device, progress=progress):
        if out is None:
            out = np.empty((len(frames), *feats.shape[1:]), np.float32)
        out[start:start + len(feats)] = feats
    if out is None:
        raise InputError("no frames to extract features from (T = 0)")
    return out
