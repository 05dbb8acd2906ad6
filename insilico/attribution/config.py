"""What an attribution run computes: method, clips, windows and Captum settings."""

from __future__ import annotations

from dataclasses import dataclass

from stimuli.errors import InputError

METHODS = ("ig", "saliency", "occlusion")


def random_share(n_clips: int) -> int:
    """How many of `n_clips` clips are random: 2, leaving at least one of the cell's top clips."""
    return max(0, min(2, n_clips - 1))


@dataclass(frozen=True)
class AttributionConfig:
    """Settings of one attribution run.

    Attributes:
        method: `ig` (Integrated Gradients, mean-grey baseline), `saliency` or `occlusion`.
        n_clips: clips per cell: the test movie's clips where the cell fired most, then
            `n_random` random ones.
        n_random: how many of `n_clips` are random clips (shared by every cell).
        window_frames: L, frames of each clip that are attributed; the twin also reads the
            recorded frames before the clip (its temporal receptive field), held fixed.
        response_frames: k, the response attributed is the predicted rate summed over the
            clip's last k frames (the cell's time window).
        ig_steps: Gauss-Legendre steps of Integrated Gradients. 8 keeps the completeness gap
            small on a trained cpu-preset twin (docs/benchmarks.md); each step is a forward
            and backward pass per clip and cell, the bulk of a report's time.
        noise_tunnel: wrap the method in Captum's NoiseTunnel (SmoothGrad) for smoother maps.
        nt_samples, nt_stdev: NoiseTunnel samples and noise level (in [0, 1] luminance units).
        occlusion_frames, occlusion_pixels: space-time patch of Occlusion (stride = patch).
        batch_size: examples per forward/backward pass (bounds memory).
        sanity_clips: clips used for the randomised-weights sanity check (0 skips it).
        twin_resolution: compute the maps from attributions averaged over the twin's input
            patches (`summaries.to_resolution`); the stored per-clip attributions stay per pixel.
        seed: random clips and the randomised twin's weights.
    """

    method: str = "ig"
    n_clips: int = 6
    n_random: int = 2
    window_frames: int = 20
    response_frames: int = 3
    ig_steps: int = 8
    noise_tunnel: bool = False
    nt_samples: int = 4
    nt_stdev: float = 0.05
    occlusion_frames: int = 5
    occlusion_pixels: int = 8
    batch_size: int = 32
    sanity_clips: int = 2
    twin_resolution: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.n_clips < 1:
            raise InputError(f"n_clips must be >= 1, got {self.n_clips}")
        if not 0 <= self.n_random <= self.n_clips:
            raise InputError(f"n_random must be in [0, n_clips={self.n_clips}], got {self.n_random}")
        if self.window_frames < 1 or not 1 <= self.response_frames <= self.window_frames:
            raise InputError(
                f"need window_frames >= 1 and 1 <= response_frames <= window_frames, got "
                f"{self.window_frames}, {self.response_frames}"
            )
        for name in ("ig_steps", "nt_samples", "occlusion_frames", "occlusion_pixels", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nt_stdev <= 0:
            raise InputError(f"nt_stdev must be > 0, got {self.nt_stdev}")
        if self.sanity_clips < 0:
            raise InputError(f"sanity_clips must be >= 0, got {self.sanity_clips}")
