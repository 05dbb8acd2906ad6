"""A trained twin: the network, its backbone and every fact needed to use it, in one file.

The checkpoint carries copies of its data's metadata (frame rate, pixel size, cell ids and
types, receptive fields, stimulus shape, backbone and normalisation), so a twin loads with no
config or recording beside it. `predict` maps frames to rates whatever the model kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stimuli.cell_ids import id_ranges
from stimuli.errors import InputError, NotFoundError
from stimuli.files import atomic_path
from vist_model.accuracy import CellAccuracy, HeldOutAccuracy
from vist_model.backbone import Backbone, BackboneSpec, load_backbone
from vist_model.baselines import CNNConfig, LNConfig, LNModel, McIntoshCNN
from vist_model.core_index import is_shared_core
from vist_model.data import PixelInputs, Rows
from vist_model.features import FeatureCache, FrameSource, backbone_fingerprint, state_fingerprint
from vist_model.provenance import TrainingRecord
from vist_model.receptive_fields import rf_to_grid
from vist_model.vist import TwinWithBackbone, ViST, ViSTConfig

CHECKPOINT_FORMAT = "insilico-twin"
CHECKPOINT_VERSION = 1
MODEL_KINDS = ("vist", "ln", "cnn")
BASELINES = {"ln": (LNConfig, LNModel), "cnn": (CNNConfig, McIntoshCNN)}
NORMALISATION = "grey/255 in [0, 1]; backbone: replicate to RGB, 224 px bilinear, ImageNet mean/std"


class CheckpointError(InputError):
    """A file is not an insilico twin checkpoint, or was written by an incompatible version."""


@dataclass(frozen=True, eq=False)
class TwinMetadata:
    """Facts about the data a twin was trained on; arrays are private copies."""

    kind: str
    cell_ids: tuple[int, ...]
    frame_rate: float
    frame_shape: tuple[int, int]  # (H, W) of the stimuli the twin is driven with
    rf: np.ndarray  # [N, H, W] receptive fields used for conditioning
    rf_source: str
    network: dict[str, Any]  # the network's config
    pixel_size_um: float | None = None
    cell_types: tuple[str, ...] | None = None
    backbone: dict[str, Any] | None = None  # BackboneSpec fields plus its weights' fingerprint
    normalisation: str = NORMALISATION
    training: dict[str, Any] = field(default_factory=dict)
    accuracy: HeldOutAccuracy | None = None  # per cell, measured after training (None: older twins)

    def __post_init__(self) -> None:
        if isinstance(self.accuracy, dict):  # as a checkpoint stores it
            object.__setattr__(self, "accuracy", HeldOutAccuracy.from_dict(self.accuracy))
        if self.kind not in MODEL_KINDS:
            raise InputError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        rf = np.array(self.rf, dtype=np.float32, copy=True)
        if rf.shape != (len(self.cell_ids), *self.frame_shape):
            raise InputError(f"rf must be [N, H, W] = {(len(self.cell_ids), *self.frame_shape)}, got {rf.shape}")
        object.__setattr__(self, "rf", rf)

    @property
    def n_cells(self) -> int:
        return len(self.cell_ids)

    def cell_index(self, cell_id: int) -> int:
        try:
            return self.cell_ids.index(int(cell_id))
        except ValueError:
            raise NotFoundError(f"the twin has no cell with id {cell_id} (its cell ids: {id_ranges(self.cell_ids)})") from None

    def cell_accuracy(self, cell_id: int) -> CellAccuracy | None:
        """How well the twin predicts a cell on held-out data (None: not measured)."""
        return self.accuracy.of(cell_id) if self.accuracy is not None else None

    @property
    def training_record(self) -> TrainingRecord:
        """`training`, typed: the recording, segments and spec the twin was trained on."""
        return TrainingRecord.from_json(self.training)

    @property
    def network_config(self) -> ViSTConfig | LNConfig | CNNConfig:
        """`network`, typed: the config of the twin's kind (defaults fill keys older twins lack)."""
        if self.kind == "vist":
            return ViSTConfig.from_dict(self.network)
        config_cls, _ = BASELINES[self.kind]
        return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.network.items()})

    @property
    def backbone_spec(self) -> BackboneSpec | None:
        """`backbone`, typed (None: a pixel-space baseline); its weights' fingerprint is `backbone["fingerprint"]`."""
        if self.backbone is None:
            return None
        return BackboneSpec(**{k: self.backbone[k] for k in ("name", "source", "pretrained", "hidden_size", "grid")})

    def describe_backbone(self) -> str:
        b = self.backbone_spec
        if b is None:
            return "none (pixel-space baseline)"
        weights = "pretrained" if b.pretrained else "random (no visual prior)"
        return f"{b.name} ({b.source}; {weights}; {b.hidden_size} channels)"


def build_network(meta: TwinMetadata) -> nn.Module:
    """An untrained network of the twin's kind and config."""
    config = meta.network_config
    if isinstance(config, ViSTConfig):
        return ViST(config, rf_to_grid(meta.rf, config.grid))
    _, model_cls = BASELINES[meta.kind]
    return model_cls(config)


def baseline_config(kind: str, n_cells: int, height: int, width: int) -> dict[str, Any]:
    """A baseline's config for a screen: LN at 16 px, the CNN at 32 px (fewer if smaller)."""
    config_cls, _ = BASELINES[kind]
    resolution = min(height, width, 16 if kind == "ln" else 32)
    return asdict(config_cls(n_cells=n_cells, resolution=resolution))


class Twin:
    """A trained model of a population of cells, with its backbone and metadata."""

    def __init__(self, network: nn.Module, metadata: TwinMetadata, backbone: Backbone | None = None) -> None:
        if (metadata.kind == "vist") != (backbone is not None):
            raise InputError("a Vi-ST twin needs a backbone; a baseline takes none")
        self.network = network
        self.metadata = metadata
        self.backbone = backbone
        self._fingerprint: str | None = metadata.backbone.get("fingerprint") if metadata.backbone else None

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> Twin:
        self.network.to(device)
        if self.backbone is not None:
            self.backbone.to(device)
        return self

    @property
    def receptive_field(self) -> int:
        return int(self.network.receptive_field)

    # --- inputs and predictions -------------------------------------------------------------
    def inputs(self, frames: FrameSource, cache: FeatureCache | None = None) -> Rows:
        """What the network reads for frames `[T, H, W]` uint8: features `[T, C, h, w]` or pixels.

        Features come from the cache (`CachedFeatures`, read per slice). Pixels of frames in
        memory are an array; of frames read lazily (`vist_model.data.RecordingFrames`), lazy.
        """
        frames = self._check_frames(frames)
        if self.backbone is None:
            if isinstance(frames, np.ndarray):
                return frames.astype(np.float32) / 255.0
            return PixelInputs(frames)
        cache = cache or FeatureCache()
        return cache.features(self.backbone, frames, device=self.device, fingerprint=self.fingerprint)

    @property
    def fingerprint(self) -> str | None:
        if self.backbone is not None and self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.backbone)
        return self._fingerprint

    @torch.no_grad()
    def predict_inputs(self, inputs: Rows, chunk: int = 512) -> np.ndarray:
        """Rates `[T, N]` (clamped at 0) from network inputs `[T, ...]`, in chunks with context."""
        self.network.eval()
        context = self.receptive_field - 1
        out = []
        for start in range(0, len(inputs), chunk):
            lo = max(0, start - context)
            x = torch.from_numpy(np.asarray(inputs[lo:start + chunk], dtype=np.float32))[None].to(self.device)
            rates = self.network(x)[0, start - lo:].clamp_min(0.0)
            out.append(rates.float().cpu().numpy())
        return np.concatenate(out)

    def predict(self, frames: FrameSource, cache: FeatureCache | None = None) -> np.ndarray:
        """Predicted spikes per frame bin `[T, N]` for frames `[T, H, W]` uint8."""
        return self.predict_inputs(self.inputs(frames, cache))

    def differentiable(self) -> nn.Module:
        """`frames [B, T, H, W] in [0, 1] -> rates [B, T, N]`, differentiable w.r.t. the frames."""
        if self.backbone is None:
            return self.network
        return TwinWithBackbone(self.backbone, self.network, self.metadata.frame_shape)

    def _check_frames(self, frames: FrameSource) -> FrameSource:
        if not isinstance(frames, Rows):  # a list or other array-like: read it
            frames = np.asarray(frames)
        if frames.dtype != np.uint8 or len(frames.shape) != 3:
            raise InputError(f"frames must be uint8 [T, H, W], got {frames.dtype} {list(frames.shape)}")
        if tuple(frames.shape[1:]) != self.metadata.frame_shape:
            raise InputError(f"frames are {frames.shape[1]}x{frames.shape[2]} px; the twin was trained on "
                             f"{self.metadata.frame_shape[0]}x{self.metadata.frame_shape[1]} px")
        return frames

    # --- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "metadata": asdict(self.metadata),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
            # Random backbones are small and must come back bit for bit; pretrained ones are
            # reloaded by name and checked against the fingerprint.
            "backbone_state": (
                {k: v.cpu().clone() for k, v in self.backbone.state_dict().items()}
                if self.backbone is not None and not self.backbone.spec.pretrained else None
            ),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", backbone_path: str | None = None) -> Twin:
        """Load a twin saved by `save`; `backbone_path` points at local weights if they moved."""
        path = Path(path)
        if path.is_dir():
            path = path / "model.pt"
        if not path.is_file():
            if is_shared_core(path.parent):
                names = sorted(p.name for p in path.parent.iterdir() if (p / "model.pt").is_file())
                raise FileNotFoundError(f"{path.parent}: a core shared by recordings {', '.join(names)}: load one "
                                        f"recording's twin, e.g. {path.parent / (names[0] if names else 'NAME')}")
            done = interrupted_epoch(path.parent)
            if done is not None:
                raise FileNotFoundError(f"{path.parent}: a training run was interrupted here after epoch {done}: "
                                        "run the same `insilico train` command to resume it")
            raise FileNotFoundError(f"{path}: no twin checkpoint here (train one with `insilico train`)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # torch raises many types for a corrupt or foreign file
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an insilico twin checkpoint")
        if payload.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path}: checkpoint version {payload.get('version')}; this toolkit reads {CHECKPOINT_VERSION}")
        meta_dict = dict(payload["metadata"])
        for key in ("cell_ids", "frame_shape", "cell_types"):
            if meta_dict.get(key) is not None:
                meta_dict[key] = tuple(meta_dict[key])
        meta = TwinMetadata(**meta_dict)
        network = build_network(meta)
        network.load_state_dict(payload["state_dict"])
        backbone = None
        if meta.backbone is not None:
            spec = meta.backbone_spec
            backbone = load_backbone(backbone_path or spec.name)
            stored = payload.get("backbone_state")
            # Stored weights are checked as saved: the installed transformers may name them otherwise.
            found = state_fingerprint(backbone.spec, stored) if stored is not None else backbone_fingerprint(backbone)
            if found != meta.backbone.get("fingerprint"):
                raise CheckpointError(
                    f"{path}: backbone {spec.name!r} on this machine differs from the one the twin was "
                    "trained with (weights fingerprint mismatch); load it with the original backbone weights (backbone_path)"
                )
            if stored is not None:
                try:
                    backbone.load_weights(stored)
                except ValueError as err:
                    raise CheckpointError(f"{path}: {err}") from None
                # Under the installed names, so that the twin saved again loads again.
                meta = replace(meta, backbone={**meta.backbone, "fingerprint": backbone_fingerprint(backbone)})
        return cls(network, meta, backbone).to(device)


TRAIN_STATE = "train_state.pt"
"""The training state a run folder holds after every epoch; a finished run deletes it."""


def training_finished(run_dir: str | Path, product: str = "model.pt") -> bool:
    """Whether `run_dir` holds the `product` of a finished training (`model.pt`, or a shared core's
    index), not a state file of a run that stopped part-way beside it."""
    run = Path(run_dir)
    return (run / product).is_file() and not (run / TRAIN_STATE).is_file()


def interrupted_epoch(run_dir: str | Path) -> int | None:
    """The last finished epoch (1-based) of an interrupted run in `run_dir`, None if none is there.

    `vist_model.train.fit` saves its state after every epoch and a finished run deletes it, so
    a state file means a run stopped part-way.
    """
    state_path = Path(run_dir) / TRAIN_STATE
    if not state_path.is_file():
        return None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        return int(state["epoch"]) + 1
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError):
        return None  # not a state `fit` wrote (it writes atomically): nothing to resume


def backbone_metadata(backbone: Backbone) -> dict[str, Any]:
    return {**asdict(backbone.spec), "fingerprint": backbone_fingerprint(backbone)}
