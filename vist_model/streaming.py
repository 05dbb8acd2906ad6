"""Reusing a causal network's activations on a fixed history, and freezing its weights.

Vi-ST is causal and its only temporal mixing is `CausalConv3d`, so what a network computes
on a history that does not change (the grey screen before a designed clip, the recorded
frames before an attributed one) can be kept: each causal convolution caches the last input
frames it read and prepends them to whatever follows (`ContextCache`). The network then runs
on the new frames alone and gives the rates it would give on `[history, new]`. Callers check
this against the full pass (`ClipResponse.verify`) and fall back where it does not hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def streams_exactly(streamed: Tensor, full: Tensor, tolerance: float = 1e-4) -> bool:
    """Whether rates from a `ContextCache` replay equal the full pass's, to `tolerance` of the
    full pass's peak (at least 1)."""
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
