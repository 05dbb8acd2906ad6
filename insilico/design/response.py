"""The twin (or an ensemble of twins) as a differentiable function of a stimulus clip.

A designed clip is shown after a grey screen, as on the rig and in the simulated retina
(whose state starts from grey). The twin's causal layers, left to themselves, would pad the
clip's past with zero *features*, which is not what a grey screen looks like to the backbone.
So `TwinResponse` prepends frames of mean grey: the backbone features of one grey frame are
computed once and repeated, and only the clip's own frames pass through the backbone.

The grey screen never changes, so what the network computes on it is computed once per
twin and kept (`vist_model.streaming.ContextCache`): every call runs the network on the
clip's own frames only, as if `lead_in` grey frames came before them. A window starting at
clip frame `s` reads inputs back to `s - (receptive_field - 1)`; the default lead-in, the
whole receptive field, makes every rate exact. A shorter one (`lead_in_for(twin, s)`) is
exact from frame `s` on. Twins the cache does not hold for (checked once against the full
pass) get the grey frames prepended instead. The network's weights are frozen while the
response is built, so backward passes compute input gradients only.

Several checkpoints of the same recording form an ensemble: their rates are averaged, so an
ensemble is one model to every objective (`TwinResponse([twin_a, twin_b])`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from stimuli.errors import InputError
from vist_model.streaming import ContextCache, frozen, streams_exactly
from vist_model.twin import Twin

GREY = 0.5


class TwinResponse(nn.Module):
    """`frames [B, T, H, W]` float in [0, 1] -> rates `[B, T, N]` (ensemble mean, unclamped).

    Args:
        twins: one twin or several trained on the same cells and screen (an ensemble).
        lead_in: grey frames prepended (see module docstring); None for the full receptive
            field (every output frame exact), 0 feeds the clip alone (zero-padded history).

    Rates are expected spike counts per frame bin. They are not clamped at 0 in `forward`, so
    gradients flow even where a twin predicts a negative rate; `rates()` clamps like
    `Twin.predict`.
    """

    def __init__(self, twins: Twin | Sequence[Twin], lead_in: int | None = None) -> None:
        super().__init__()
        twins = [twins] if isinstance(twins, Twin) else list(twins)
        if not twins:
            raise InputError("an ensemble needs at least one twin")
        first = twins[0].metadata
        for other in twins[1:]:
            meta = other.metadata
            if meta.cell_ids != first.cell_ids or meta.frame_shape != first.frame_shape:
                raise InputError("every twin of an ensemble must model the same cells on the same screen")
            if meta.frame_rate != first.frame_rate:
                raise InputError(f"ensemble twins disagree on the frame rate ({meta.frame_rate} vs {first.frame_rate} Hz)")
        self.twins = twins
        self.metadata = first
        if lead_in is not None and lead_in < 0:
            raise InputError(f"lead_in must be >= 0 frames, got {lead_in}")
        self.lead_in = lead_in
        # Plain lists on purpose: the twins' networks stay frozen and are not parameters here.
        self._grey: list[Tensor | None] = [None] * len(twins)
        self._history: list[ContextCache | None] = [None] * len(twins)

    @property
    def device(self) -> torch.device:
        return self.twins[0].device

    @property
    def n_cells(self) -> int:
        return self.metadata.n_cells

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4 or tuple(frames.shape[2:]) != self.metadata.frame_shape:
            h, w = self.metadata.frame_shape
            raise InputError(f"frames must be [B, T, {h}, {w}], got {list(frames.shape)}")
        total = None
        for k, twin in enumerate(self.twins):
            rates = self._one(k, twin, frames)
            total = rates if total is None else total + rates
        return total / len(self.twins)

    def _one(self, k: int, twin: Twin, frames: Tensor) -> Tensor:
        encode = twin.backbone if twin.backbone is not None else (lambda x: x)
        x = encode(frames)
        lead = twin.receptive_field - 1 if self.lead_in is None else self.lead_in
        with frozen(twin.network) as network:
            if lead == 0:
                return network(x)
            cache = self._grey_history(k, twin, encode, lead, frames)
            if cache is not None:
                with cache.replay():
                    return network(x)
            return network(self._prepend_grey(k, lead, x))[:, lead:]

    def _prepend_grey(self, k: int, lead: int, x: Tensor) -> Tensor:
        grey = self._grey[k]
        return torch.cat((grey.expand(x.shape[0], lead, *grey.shape[2:]), x), dim=1)

    @torch.no_grad()
    def _grey_history(self, k: int, twin: Twin, encode, lead: int, frames: Tensor) -> ContextCache | None:
        """The network's state after `lead` grey frames, or None where streaming does not hold."""
        grey = self._grey[k]
        if grey is None or grey.device != frames.device or grey.dtype != frames.dtype:
            screen = torch.full((1, 1, *self.metadata.frame_shape), GREY, dtype=frames.dtype, device=frames.device)
            self._grey[k] = grey = encode(screen).detach()
            cache: ContextCache | None = ContextCache(twin.network)
            if cache.convs:
                cache.record(grey.expand(1, lead, *grey.shape[2:]))
                probe = encode(torch.rand((1, 2, *self.metadata.frame_shape), generator=torch.Generator().manual_seed(0))
                               .to(device=frames.device, dtype=frames.dtype))
                with cache.replay():
                    streamed = twin.network(probe)
                full = twin.network(self._prepend_grey(k, lead, probe))[:, lead:]
                if not streams_exactly(streamed, full):
                    cache = None
            else:
                cache = None  # nothing causal to stream: prepend the grey frames instead
            self._history[k] = cache
        return self._history[k]

    @torch.no_grad()
    def rates(self, frames: np.ndarray | Tensor, batch: int = 8) -> np.ndarray:
        """Rates `[B, T, N]` clamped at 0 for clips `[B, T, H, W]` (float in [0, 1] or uint8)."""
        x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        x = x.to(torch.float32)
        if x.ndim == 3:
            x = x[None]
        out = [self(x[i:i + batch].to(self.device)).clamp_min(0.0).cpu() for i in range(0, len(x), batch)]
        return torch.cat(out).numpy()


def lead_in_for(twins: Twin | Sequence[Twin], window_start: int) -> int:
    """Grey frames needed so that rates from clip frame `window_start` on are exact."""
    twins = [twins] if isinstance(twins, Twin) else list(twins)
    return max(0, max(t.receptive_field for t in twins) - 1 - int(window_start))
