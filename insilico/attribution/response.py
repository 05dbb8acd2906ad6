"""The function attributed: a clip's frames -> every cell's predicted response in its window.

The twin reads `receptive_field - 1` frames of history. Those frames come before the clip,
are held at their recorded values (in the input and in the baseline alike) and only the
clip's last `window` frames are attributed. Vi-ST is causal and its only temporal mixing is
`CausalConv3d`, so the history's activations do not depend on the clip: they are computed
once per clip and every interpolation step, noise sample, occlusion and cell reuses them
(`ContextCache`). A check against the full forward pass guards this (`verify`); twins it does
not hold for (a different architecture) fall back to the full pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vist_model.backbone import Backbone
from vist_model.causal import CausalConv3d


class ContextCache:
    """Each causal convolution's last input frames after a network has read a history.

    `record(network, inputs [1, C, ...])` runs the history once; inside `replay()`, each
    `CausalConv3d` prepends its cached frames instead of zeros, so `network(window)` returns
    exactly the rates the network gives on `[history, window]`, for the window's frames.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.convs = [m for m in network.modules() if isinstance(m, CausalConv3d)]
        self._cache: dict[int, Tensor] = {}

    @torch.no_grad()
    def record(self, inputs: Tensor) -> None:
        """Run the history `inputs [1, C, ...]` (network input layout, time on dim 1)."""
        self._cache.clear()
        hooks = []
        for conv in self.convs:
            def keep(module: CausalConv3d, args: tuple[Tensor, ...], key: int = id(conv)) -> None:
                x = args[0]
                pad = module.time_pad
                tail = x[:, :, -pad:] if pad else x[:, :, :0]
                if tail.shape[2] < pad:  # a history shorter than the conv's reach: zeros, as in the full pass
                    tail = F.pad(tail, (0, 0, 0, 0, pad - tail.shape[2], 0))
                self._cache[key] = tail.detach()
            hooks.append(conv.register_forward_pre_hook(keep))
        try:
            self.network(inputs)
        finally:
            for h in hooks:
                h.remove()

    @contextmanager
    def replay(self) -> Iterator[None]:
        if len(self._cache) != len(self.convs):
            raise RuntimeError("ContextCache.replay() before record()")
        for conv in self.convs:
            conv.forward = self._streamed(conv, self._cache[id(conv)])  # type: ignore[method-assign]
        try:
            yield
        finally:
            for conv in self.convs:
                del conv.forward

    @staticmethod
    def _streamed(conv: CausalConv3d, cached: Tensor):
        # CausalConv3d keeps its F.pad spec in `_pad`: (W, W, H, H, T_front, T_back).
        pw_l, pw_r, ph_t, ph_b, _, _ = conv._pad

        def forward(x: Tensor) -> Tensor:
            history = cached.to(x.dtype).expand(x.shape[0], -1, -1, -1, -1)
            x = torch.cat([history, x], dim=2)
            if pw_l or pw_r or ph_t or ph_b:
                x = F.pad(x, (pw_l, pw_r, ph_t, ph_b, 0, 0))
            return conv.conv(x)

        return forward


class ClipResponse(nn.Module):
    """`frames [B, L, H, W] in [0, 1] -> response [B, N]`: rates summed over the last k frames.

    Args:
        network: the twin's network (frozen here: no weight gradients are computed).
        backbone: the twin's backbone, or None for a pixel-space network.
        history: `[C, H, W]` float frames in [0, 1] shown before the clip (C may be 0).
        response_frames: k.
        stream: reuse the history's activations (see module doc); False runs the full pass.
    """

    def __init__(self, network: nn.Module, backbone: Backbone | None, history: Tensor,
                 response_frames: int, stream: bool = True) -> None:
        super().__init__()
        self.network = network
        self.backbone = backbone
        self.response_frames = int(response_frames)
        with torch.no_grad():
            self.history = self._encode(history[None]) if history.shape[0] else None
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
        scale = float(full.abs().max().clamp_min(1.0))
        return float((streamed - full).abs().max()) <= tolerance * scale


@contextmanager
def frozen(network: nn.Module) -> Iterator[nn.Module]:
    """The network in eval mode with no weight gradients (input gradients only), then restored."""
    was_training = network.training
    flags = [p.requires_grad for p in network.parameters()]
    network.eval()
    network.requires_grad_(False)
    try:
        yield network
    finally:
        for p, flag in zip(network.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        network.train(was_training)
