"""The difference-of-Gaussians readout: its masks, its fit, its start where the cells are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from stimuli.recording import RecordingWriter, open_recording
from stimuli.recording.rf_geometry import rf_centre_and_size
from vist_model.readout import DoGReadout
from vist_model.receptive_fields import cell_locations, receptive_fields
from vist_model.train import parameter_groups
from vist_model.vist import ViST, vist_config

GRID, MAPS = 16, 3


def _readout(centres: list[tuple[float, float]], sigma: float = 0.75) -> DoGReadout:
    return DoGReadout(len(centres), GRID, GRID, MAPS, torch.tensor(centres), sigma=sigma)


def test_masks_are_a_centre_less_its_surround_integrated_over_each_position() -> None:
    readout = _readout([(7.0, 7.0), (7.5, 8.0)], sigma=0.8)
    masks = readout.spatial.detach()
    # Unit-integral Gaussians: far from the borders the mask sums to 1 - surround weight (0.5).
    torch.testing.assert_close(masks.sum(dim=(1, 2)), torch.full((2,), 0.5), atol=1e-3, rtol=0)
    assert divmod(int(masks[0].argmax()), GRID) == (7, 7)
    # A centre between two positions puts the same mass on both.
    torch.testing.assert_close(masks[1, 7], masks[1, 8])
    assert float(masks[0, 7, 0]) < 0  # the surround is antagonistic
    # Narrower than a position: the mass still lands on the centre's position, not between samples.
    point = _readout([(7.0, 7.0)], sigma=0.1)
    with torch.no_grad():
        point.surround_logit.fill_(-30.0)  # no surround
    assert float(point.spatial.detach()[0, 7, 7]) > 0.99


def test_a_dog_readout_recovers_a_cell_it_did_not_start_on() -> None:
    """Fitted on white maps, the readout finds the centre, width and surround that made the rates."""
    torch.manual_seed(0)
    truth = _readout([(6.0, 9.0)], sigma=1.5)
    with torch.no_grad():
        truth.log_ratio.fill_(np.log(1.5))  # surround 2.5 x the centre
        truth.surround_logit.fill_(np.log(0.7 / 0.3))
        truth.features.copy_(torch.tensor([[1.0, -0.5, 0.0]]))
    x = torch.randn(8, MAPS, 64, GRID, GRID)
    target = truth(x).detach()
    fitted = _readout([(8.0, 7.0)], sigma=0.75)
    optimiser = torch.optim.Adam(fitted.parameters(), lr=0.05)
    for _ in range(400):
        optimiser.zero_grad()
        loss = ((fitted(x) - target) ** 2).mean()
        loss.backward()
        optimiser.step()
    torch.testing.assert_close(fitted.centre.detach(), truth.centre.detach(), atol=0.05, rtol=0)
    assert abs(float(fitted.log_sigma.detach().exp()) - 1.5) < 0.05
    assert abs(float(torch.sigmoid(fitted.surround_logit.detach())) - 0.7) < 0.05


def test_shape_parameters_are_not_decayed() -> None:
    readout = _readout([(7.0, 7.0)])
    groups = parameter_groups(readout, list(readout.parameters()), 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {name for name, p in readout.named_parameters() if id(p) not in decayed}
    assert names == set(DoGReadout.SHAPE_PARAMETERS)


def test_cpu_preset_places_dog_masks_at_the_rf_centres() -> None:
    maps = torch.zeros(2, GRID, GRID)
    maps[0, 3, 12] = maps[1, 10, 2] = 1.0
    network = ViST(vist_config("cpu", 2, 4, tcn_width=8), maps)
    assert network.config.readout == "dog"
    torch.testing.assert_close(network.readout.centre.detach(), torch.tensor([[3.0, 12.0], [10.0, 2.0]]), atol=1e-3, rtol=0)
    moved = torch.zeros(2, GRID, GRID)
    moved[0, 5, 5] = moved[1, 0, 15] = 1.0
    network.start_readout_at(moved)
    torch.testing.assert_close(network.readout.centre.detach(), torch.tensor([[5.0, 5.0], [0.0, 15.0]]), atol=1e-3, rtol=0)


def _movie_only_recording(path: Path, centres: list[tuple[int, int]]) -> Path:
    """Smooth random frames (spatially correlated, as a movie) and cells that answer light
    (ON) or dark (OFF) at `centres` one frame later; no `/cells/rf`, no white noise."""
    rng = np.random.default_rng(0)
    frames = gaussian_filter(rng.standard_normal((3000, 32, 32)), (0, 2.5, 2.5))
    frames = np.clip(128 + 128 * frames / frames.std() * 0.25, 0, 255).astype(np.uint8)
    contrast = frames.astype(np.float64) / 255 - 0.5
    drive = np.stack([contrast[:, r, c] * (1 if k % 2 == 0 else -1) for k, (r, c) in enumerate(centres)], axis=1)
    rate = np.exp(3 * np.roll(drive, 1, axis=0))
    counts = rng.poisson(rate)[None].astype(np.float32)
    with RecordingWriter(path, frame_rate=30.0, height=32, width=32, cell_ids=list(range(len(centres))),
                         n_repeats=1) as w:
        w.append_segment("mov1", frames, counts)
    return path


def test_without_rfs_the_readout_starts_where_the_movie_sta_peaks(tmp_path: Path) -> None:
    centres = [(5, 6), (20, 27), (25, 4), (14, 15)]
    with open_recording(_movie_only_recording(tmp_path / "movie.h5", centres)) as rec:
        rfs = receptive_fields(rec)
        assert rfs.source.startswith("flat maps")
        located = cell_locations(rec, rfs, [rec.segment("mov1")])
        with_rf = cell_locations(rec, located, [rec.segment("mov1")])
    assert located.source.startswith("the peak of each cell's STA")
    assert with_rf is located  # real maps are kept as they are
    # Where the readout will start (`grid_centres` takes the same centre).
    found = [rf_centre_and_size(np.abs(m))[0] for m in located.maps]
    np.testing.assert_allclose(found, centres, atol=1)
