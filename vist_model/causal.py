"""Time-causal 3D convolution shared by the TCN and the CMST blocks.

Tensors are laid out `[B, C, T, H, W]`. A convolution is causal in time when the
output at frame t only reads frames <= t: we left-pad time by
`dilation * (kernel_t - 1)` zeros and pad nothing on the right. Zeros (not
replicated frames) follow the public Vi-ST code's `CausalConv3d` with
`pad_mode="constant"`.

On CPU, PyTorch's grouped 3D convolutions are slow, their backward pass most, and with temporal
dilation slowest; they are what the TCN and the CMST are made of (depthwise: one filter per
channel). `depthwise_conv3d` runs them channels-last, and the dilated ones (the TCN's) as a sum
of depthwise 2D convolutions, one per temporal tap: the same values from the same `nn.Conv3d`
weights, so checkpoints are unchanged (`benchmarks/twin_speed.py`). GPUs run `nn.Conv3d`.
An FFT along time was faster still for the CMST's long kernels but is not exactly causal: its
round-off reaches earlier outputs from later frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stimuli.errors import InputError

__all__ = ["CausalConv3d", "depthwise_conv3d"]


def depthwise_conv3d(x: Tensor, conv: nn.Conv3d) -> Tensor:
    """`conv(x)` for a depthwise `conv` (one filter per channel, no padding) on CPU.

    With temporal dilation, a depthwise 2D convolution per temporal tap over the frames it reads,
    summed; without, `conv` itself on channels-last input (oneDNN's fast layout for it).

    Args:
        x: `[B, C, T, H, W]`, already padded.
        conv: weights `[C, 1, kt, kh, kw]`, temporal dilation d.

    Returns:
        `[B, C, T - d * (kt - 1), H - kh + 1, W - kw + 1]`.
    """
    dilation = conv.dilation[0]
    if dilation == 1:
        return conv(x.contiguous(memory_format=torch.channels_last_3d))
    b, c, t, h, w = x.shape
    kt = conv.kernel_size[0]
    t_out = t - dilation * (kt - 1)
    frames = x.transpose(1, 2)  # [B, T, C, H, W]: the frames a tap reads are one slice of T
    out = None
    for tap in range(kt):
        shifted = frames[:, tap * dilation:tap * dilation + t_out].reshape(b * t_out, c, h, w)
        y = F.conv2d(shifted, conv.weight[:, :, tap], conv.bias if tap == 0 else None, groups=c)
        out = y if out is None else out + y
    return out.reshape(b, t_out, c, *out.shape[-2:]).transpose(1, 2)


class CausalConv3d(nn.Module):
    """Conv3d, causal in time, with optional 'same' spatial padding.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: `(kt, kh, kw)`; kh and kw must be odd.
        dilation: temporal dilation (spatial dilation is 1).
        groups: as in `nn.Conv3d`.
        same_spatial: pad space so H, W are kept (True) or shrink them by
            `kh - 1`, `kw - 1` (False, 'valid').

    Shapes: `[B, in, T, H, W] -> [B, out, T, H', W']`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        *,
        dilation: int = 1,
        groups: int = 1,
        same_spatial: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kt, kh, kw = kernel_size
        if kt < 1 or kh % 2 == 0 or kw % 2 == 0:
            raise InputError(f"kernel_size must be (kt>=1, odd, odd), got {kernel_size}")
        if dilation < 1:
            raise InputError(f"dilation must be >= 1, got {dilation}")
        self.time_pad = dilation * (kt - 1)
        ph, pw = (kh // 2, kw // 2) if same_spatial else (0, 0)
        # F.pad order: (W_left, W_right, H_top, H_bottom, T_front, T_back).
        self._pad = (pw, pw, ph, ph, self.time_pad, 0)
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size,
            dilation=(dilation, 1, 1),
            groups=groups,
            bias=bias,
        )
        self.depthwise = groups > 1 and groups == in_channels == out_channels

    @property
    def receptive_field(self) -> int:
        """Frames of input seen by one output frame (the current one included)."""
        return self.time_pad + 1

    def forward(self, x: Tensor) -> Tensor:
        if any(self._pad):
            x = F.pad(x, self._pad, mode="constant", value=0.0)
        if self.depthwise and x.device.type == "cpu":
            return depthwise_conv3d(x, self.conv)
        return self.conv(x)
