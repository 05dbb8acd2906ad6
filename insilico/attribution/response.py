"""The function attributed: a clip's frames -> every cell's predicted response in its window.

The twin reads `receptive_field - 1` frames of history. Those frames come before the clip,
are held at their recorded values (in the input and in the baseline alike) and only the
clip's last `window` frames are attributed. Vi-ST is causal and its only temporal mixing is
`CausalConv3d`, so the history's activations do not depend on the clip: they are computed
once per clip and every interpolation step, noise sample, occlusion and cell reuses them
(`vist_model.streaming.ContextCache`). A check against the full forward pass guards this
(`verify`); twins it does not hold for (a different architecture) fall back to the full pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vist_model.backbone import Backbone
from vist_model.streaming import ContextCache, streams_exactly


class ClipResponse(nn.Module):
    """`frames [B, L, H, W] in [0, 1] -> response [B, N]`: rates summed over the last k frames.

    Args:
        network: the twin's network (frozen here: no weight gradients are computed).
        backbone: the twin's backbone, or None for a pixel-space network.
        history: `[C, H, W]` float frames in [0, 1] shown before the clip (C may be 0), or,
            with `encoded`, the backbone's features of those frames `[C, c, g, g]`.
        response_frames: k.
        stream: reuse the history's activations (see module doc); False runs the full pass.
        encoded: `history` is already encoded (a report encodes the test movie once, not
            the same history frames again for every clip).
    """

    def __init__(self, network: nn.Module, backbone: Backbone | None, history: Tensor,
                 response_frames: int, stream: bool = True, encoded: bool = False) -> None:
        super().__init__()
        self.network = network
        self.backbone = backbone
        self.response_frames = int(response_frames)
        with torch.no_grad():
            if not history.shape[0]:
                self.history = None
            else:
                self.history = history[None] if encoded else self._encode(history[None])
        self.cache = ContextCache(network) if stream and self.history is not None else None
        if self.cache is not None:
            if not self.cache.convs:
                self.cache = None
            else:
                self.cache.record(self.history)

    def _encode(self, frames: Tensor) -> Tensor:
        return self.backbone(frames) if self.backbone is not None else frames

    def rates(self, frames: Tensor) -> Tensor:
        """Predicted rates `[B, L, N]` on the clip's frames (unclamped)."""
        inputs = self._encode(frames)
        if self.cache is not None:
            with self.cache.replay():
                return self.network(inputs)
        if self.history is None:
            return self.network(inputs)
        history = self.history.expand(inputs.shape[0], *self.history.shape[1:])
        return self.network(torch.cat([history, inputs], dim=1))[:, history.shape[1]:]

    def forward(self, frames: Tensor) -> Tensor:
        return self.rates(frames)[:, -self.response_frames:].sum(dim=1)

    @torch.no_grad()
    def verify(self, frames: Tensor, tolerance: float = 1e-4) -> bool:
        """Whether the streamed response equals the full pass on `frames [B, L, H, W]`."""
        if self.cache is None:
            return True
        streamed = self.forward(frames)
        cache, self.cache = self.cache, None
        try:
            full = self.forward(frames)
        finally:
            self.cache = cache
        return streams_exactly(streamed, full, tolerance)
