"""Evaluation metrics for predicted firing rates (numpy / scipy, no torch).

Shapes: predictions `[T, N]` (frames x cells), repeated responses `[R, T, N]`
(repeats x frames x cells), trial-averaged responses `[T, N]`. Several test
clips are concatenated along T by the caller, as the public Vi-ST code does.

Correlation
    `cc[k]` = Pearson correlation over time between the prediction and the
    trial-averaged response of cell k; a constant trace gives 0 (the public
    code sets NaN to 0). The paper's two summaries are both reported, named
    for what they are: `mean_abs_cc` = mean over cells of |cc| (the public
    code's logged "corr") and `mean_positive_cc` = mean of cc over the cells
    with cc > 0 (its `predict_step` "mean_cc"). `mean_cc` is the plain mean.

Noise and explainable variance (Cadena et al. 2019, PLoS Comput Biol), per cell,
with y_rt the response on repeat r at frame t, ybar_t its trial mean:

    noise variance  s2     = mean_t var_r(y_rt)            (ddof = 1 over repeats)
    total variance  Var[y] = var_{r,t}(y_rt)               (ddof = 0 over all R*T values)
    explainable     EV     = Var[y] - s2                   (= var_t(ybar) - s2 / R)
    FEV                    = EV / Var[y]
    FEVE                   = 1 - (mean_{r,t}(y_rt - yhat_t)^2 - s2) / EV
                           = 1 - (mean_t(ybar_t - yhat_t)^2 - s2 / R) / (var_t(ybar) - s2 / R)

The two FEVE lines are algebraically equal (ddof as stated), so FEVE can be read
as "fraction of the trial mean's variance that is not noise, explained". A model
that outputs the true underlying rate scores 1 in expectation; one that copies
the noisy trial mean scores slightly above 1. Cells with EV <= 0 (pure noise)
get NaN and are left out of means.

    noise ceiling   cc_max = sqrt(EV / var_t(ybar))        (Schoppe et al. 2016)

is the expected correlation between the true rate and the R-trial mean, the
highest `cc` a model can reach against this data; `cc / cc_max` normalises it.
Noise quantities need R >= 2 repeats, otherwise they are NaN.

Spike-duration KL (SD-KL, paper supplement Algorithm 1; public code
`spike_kde_divergence`), per cell:

1. set negative values to 0; find peaks with `find_peaks(trace, height=0)`;
2. durations = `peak_widths(min(trace, 1), peaks, rel_height=1)[0]` (full width
   at the base of each peak, in frames, on the trace clipped to [0, 1]; the
   public code finds peaks before clipping at 1 and measures widths after, and
   so do we);
3. if either trace has fewer than 2 peaks, SD-KL = 1000;
4. Gaussian KDEs of the predicted and true durations with an absolute
   bandwidth of 0.3 frames (scipy's `gaussian_kde(bw_method=h)` would scale h
   by the data's standard deviation; the paper's 0.3 is a width in frames, so
   the KDE is written out: density(g) = mean_i N(g; d_i, 0.3^2));
5. both evaluated on one 200-point grid from min - 3 h to max + 3 h over both
   duration sets, normalised to sum 1 (as torchmetrics' `kl_divergence` does);
6. SD-KL = KL(P_pred || P_true) = sum p log(p / q), with 0 log 0 = 0
   (`scipy.special.rel_entr`); an infinite or NaN value becomes 1000.

`mean_sd_kl` averages over cells, 1000s included, like the public code.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.signal import find_peaks, peak_widths
from scipy.special import rel_entr

from stimuli.errors import InputError
from stimuli.files import to_plain

__all__ = [
    "SD_KL_MISSING",
    "EvaluationResult",
    "evaluate",
    "explainable_variance",
    "fraction_explainable_variance",
    "feve",
    "noise_ceiling",
    "noise_variance",
    "pearson_per_cell",
    "sd_kl",
    "sd_kl_per_cell",
    "spike_durations",
]

SD_KL_MISSING = 1000.0


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name} must be [T, N], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf")
    return arr


def _as_repeats(responses: np.ndarray) -> np.ndarray:
    arr = np.asarray(responses, dtype=np.float64)
    if arr.ndim != 3:
        raise InputError(f"responses must be [R, T, N], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("responses contain NaN or inf")
    return arr


def pearson_per_cell(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson correlation over time per cell, `[T, N], [T, N] -> [N]`; 0 for constant traces."""
    p, y = _as_2d("prediction", prediction), _as_2d("target", target)
    if p.shape != y.shape:
        raise InputError(f"prediction {p.shape} and target {y.shape} differ in shape")
    if p.shape[0] < 2:
        raise InputError(f"correlation needs T >= 2 frames, got {p.shape[0]}")
    pc, yc = p - p.mean(axis=0), y - y.mean(axis=0)
    denom = np.sqrt((pc**2).sum(axis=0) * (yc**2).sum(axis=0))
    out = np.zeros(p.shape[1])
    ok = denom > 0
    out[ok] = (pc * yc).sum(axis=0)[ok] / denom[ok]
    return np.clip(out, -1.0, 1.0)


def noise_variance(responses: np.ndarray) -> np.ndarray:
    """`mean_t var_r(y)` with ddof 1, `[R, T, N] -> [N]`; NaN if R < 2."""
    y = _as_repeats(responses)
    if y.shape[0] < 2:
        return np.full(y.shape[2], np.nan)
    return y.var(axis=0, ddof=1).mean(axis=0)


def explainable_variance(responses: np.ndarray) -> np.ndarray:
    """`Var[y] - noise variance` (Cadena et al. 2019), `[R, T, N] -> [N]`."""
    y = _as_repeats(responses)
    total = y.reshape(-1, y.shape[2]).var(axis=0, ddof=0)
    return total - noise_variance(y)


def fraction_explainable_variance(responses: np.ndarray) -> np.ndarray:
    """FEV = EV / Var[y], `[R, T, N] -> [N]`; NaN where Var[y] = 0."""
    y = _as_repeats(responses)
    total = y.reshape(-1, y.shape[2]).var(axis=0, ddof=0)
    ev = explainable_variance(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, ev / np.where(total > 0, total, 1.0), np.nan)


def feve(prediction: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance explained, `[T, N], [R, T, N] -> [N]`.

    NaN for cells with no explainable variance (EV <= 0) or R < 2.
    """
    p, y = _as_2d("prediction", prediction), _as_repeats(responses)
    if p.shape != y.shape[1:]:
        raise InputError(f"prediction {p.shape} does not match responses {y.shape[1:]}")
    ev = explainable_variance(y)
    mse = ((y - p[None]) ** 2).mean(axis=(0, 1))
    s2 = noise_variance(y)
    out = np.full(p.shape[1], np.nan)
    ok = np.isfinite(ev) & (ev > 0)
    out[ok] = 1.0 - (mse[ok] - s2[ok]) / ev[ok]
    return out


def noise_ceiling(responses: np.ndarray) -> np.ndarray:
    """Highest expected CC with the trial mean, `sqrt(EV / var_t(ybar))`, `[R, T, N] -> [N]`.

    Clipped to [0, 1]; NaN where the trial mean is constant or R < 2.
    """
    y = _as_repeats(responses)
    var_mean = y.mean(axis=0).var(axis=0, ddof=0)
    ev = explainable_variance(y)
    out = np.full(y.shape[2], np.nan)
    ok = np.isfinite(ev) & (var_mean > 0)
    out[ok] = np.sqrt(np.clip(ev[ok] / var_mean[ok], 0.0, 1.0))
    return out


KDE_FLOOR = 1e-12


def spike_durations(trace: np.ndarray) -> np.ndarray:
    """Widths (frames) at the base of every peak of a rate trace `[T]` (steps 1-2 above)."""
    x = np.asarray(trace, dtype=np.float64)
    if x.ndim != 1:
        raise InputError(f"trace must be [T], got shape {x.shape}")
    x = np.maximum(x, 0.0)
    peaks, _ = find_peaks(x, height=0)
    if len(peaks) == 0:
        return np.empty(0)
    with warnings.catch_warnings():
        # A peak clipped at 1 has zero prominence and width; it counts as such, as in the public code.
        # (scipy's PeakPropertyWarning has no public import path.)
        warnings.filterwarnings("ignore", message="some peaks have a (prominence|width) of 0")
        return peak_widths(np.minimum(x, 1.0), peaks, rel_height=1.0)[0]


def _kde(samples: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    z = (grid[:, None] - samples[None, :]) / bandwidth
    return np.exp(-0.5 * z * z).mean(axis=1) / (bandwidth * np.sqrt(2.0 * np.pi))


def sd_kl(
    prediction: np.ndarray,
    target: np.ndarray,
    *,
    bandwidth: float = 0.3,
    grid_size: int = 200,
    cut: float = 3.0,
) -> float:
    """SD-KL of one cell, traces `[T]`: KL(P_pred || P_true) of spike-duration densities."""
    if not bandwidth > 0 or grid_size < 2:
        raise InputError(f"need bandwidth > 0 and grid_size >= 2, got {bandwidth}, {grid_size}")
    d_pred, d_true = spike_durations(prediction), spike_durations(target)
    if len(d_pred) < 2 or len(d_true) < 2:
        return SD_KL_MISSING
    both = np.concatenate([d_pred, d_true])
    grid = np.linspace(both.min() - cut * bandwidth, both.max() + cut * bandwidth, grid_size)
    # With a 0.3-frame bandwidth the Gaussians underflow to exactly 0 between far-apart
    # durations, and one empty grid point would make the KL infinite (and the score 1000) for
    # nearly every cell; a density floor far below any real grid value keeps it finite.
    p = _kde(d_pred, grid, bandwidth) + KDE_FLOOR
    q = _kde(d_true, grid, bandwidth) + KDE_FLOOR
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(rel_entr(p / p.sum(), q / q.sum()).sum())
    return value if np.isfinite(value) else SD_KL_MISSING


def sd_kl_per_cell(prediction: np.ndarray, target: np.ndarray, **kwargs: Any) -> np.ndarray:
    """SD-KL per cell, `[T, N], [T, N] -> [N]` (keyword arguments go to `sd_kl`)."""
    p, y = _as_2d("prediction", prediction), _as_2d("target", target)
    if p.shape != y.shape:
        raise InputError(f"prediction {p.shape} and target {y.shape} differ in shape")
    return np.array([sd_kl(p[:, k], y[:, k], **kwargs) for k in range(p.shape[1])])


def _nanmean(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Per-cell metrics (arrays `[N]`) and their summaries; see the module docstring.

    Noise-based fields are NaN when the responses had fewer than 2 repeats.
    """

    cc: np.ndarray
    feve: np.ndarray
    fev: np.ndarray
    noise_ceiling: np.ndarray
    sd_kl: np.ndarray
    mean_cc: float
    mean_abs_cc: float
    mean_positive_cc: float
    n_positive_cc: int
    mean_feve: float
    mean_noise_ceiling: float
    mean_sd_kl: float
    n_cells: int
    n_frames: int
    n_repeats: int

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types; NaN becomes None."""
        return to_plain({name: getattr(self, name) for name in self.__dataclass_fields__}, nan_as_null=True)


def evaluate(prediction: np.ndarray, responses: np.ndarray) -> EvaluationResult:
    """All metrics for one model on one test set.

    Args:
        prediction: `[T, N]` predicted rates (pass `ViST.predict` output, clamped at 0).
        responses: `[R, T, N]` single-trial responses, or `[T, N]` trial means
            (then the noise-based metrics are NaN).
    """
    p = _as_2d("prediction", prediction)
    y = np.asarray(responses, dtype=np.float64)
    if y.ndim == 2:
        y = y[None]
    y = _as_repeats(y)
    if y.shape[1:] != p.shape:
        raise InputError(f"prediction {p.shape} does not match responses {y.shape}")
    trial_mean = y.mean(axis=0)
    cc = pearson_per_cell(p, trial_mean)
    positive = cc[cc > 0]
    feve_k = feve(p, y)
    ceiling = noise_ceiling(y)
    sdkl = sd_kl_per_cell(p, trial_mean)
    return EvaluationResult(
        cc=cc,
        feve=feve_k,
        fev=fraction_explainable_variance(y),
        noise_ceiling=ceiling,
        sd_kl=sdkl,
        mean_cc=float(cc.mean()),
        mean_abs_cc=float(np.abs(cc).mean()),
        mean_positive_cc=float(positive.mean()) if positive.size else float("nan"),
        n_positive_cc=int(positive.size),
        mean_feve=_nanmean(feve_k),
        mean_noise_ceiling=_nanmean(ceiling),
        mean_sd_kl=float(sdkl.mean()),
        n_cells=int(p.shape[1]),
        n_frames=int(p.shape[0]),
        n_repeats=int(y.shape[0]),
    )
