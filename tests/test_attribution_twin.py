"""Attribution reports of the tiny Vi-ST twin: streaming, completeness, files, command line."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from insilico.attribution.cli import attribute_command
from insilico.attribution.config import AttributionConfig
from insilico.attribution.pipeline import attribute_cells
from insilico.attribution.response import ClipResponse
from insilico.attribution.sanity import randomised_network
from insilico.cells import parse_cells
from vist_model.streaming import frozen
from vist_model.twin import Twin

# The tiny twin runs a 224-px DINOv2 on every frame: a few seconds per clip on two busy cores.
pytestmark = pytest.mark.slow

CONFIG = AttributionConfig(n_clips=2, n_random=1, window_frames=6, response_frames=2, ig_steps=24,
                           sanity_clips=1, batch_size=48)


@pytest.fixture(scope="module")
def twin(tiny_twin_dir: Path) -> Twin:
    return Twin.load(tiny_twin_dir, device="cpu")


@pytest.fixture(scope="module")
def reports(tiny_twin_dir: Path, tiny_recording: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("reports")
    results = attribute_cells(tiny_twin_dir, tiny_recording, "0,5", out, config=CONFIG, device="cpu")
    return out, results


def test_cached_history_gives_the_full_pass(twin: Twin, tiny_recording: Path) -> None:
    from stimuli.recording import open_recording

    with open_recording(tiny_recording) as rec:
        frames = torch.from_numpy(rec.frames("mov2")[:100]).float() / 255
    history, clip = frames[:94], frames[94:]
    with frozen(twin.network):
        streamed = ClipResponse(twin.network, twin.backbone, history, 3)
        full = ClipResponse(twin.network, twin.backbone, history, 3, stream=False)
        assert streamed.cache is not None and full.cache is None
        with torch.no_grad():
            a, b = streamed.rates(clip[None]), full.rates(clip[None])
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        assert streamed.verify(clip[None])
        # ... and it is the twin's own prediction for those frames.
        predicted = twin.predict((frames.numpy() * 255).round().astype(np.uint8))[94:]
        assert np.allclose(np.clip(a[0].numpy(), 0, None), predicted, atol=1e-4)
    assert all(p.requires_grad for p in twin.network.parameters())  # frozen() restored them


def test_integrated_gradients_complete_on_the_twin(reports) -> None:
    _, results = reports
    for r in results:
        # The summary is the per-clip gaps over the per-clip drives.
        assert np.isfinite(r.completeness_gap)
        gap = r.completeness_gap * np.abs(r.response - r.baseline_response).sum()
        assert gap == pytest.approx(np.abs(r.gap).sum(), rel=1e-3, abs=1e-6)
    # A briefly trained twin barely moves for some cells; judge the one with the largest drive.
    strongest = max(results, key=lambda r: np.abs(r.response - r.baseline_response).min())
    assert strongest.completeness_gap < 0.05, f"gap {strongest.completeness_gap:.3f} of f(x) - f(baseline)"


def test_summaries_have_the_documented_shapes(reports, twin: Twin) -> None:
    _, results = reports
    h, w = twin.metadata.frame_shape
    for r in results:
        assert r.attributions.shape == (2, CONFIG.window_frames, h, w)
        assert r.spatial.shape == (h, w) and r.temporal.shape == (CONFIG.window_frames,)
        assert [c.kind for c in r.clips] == ["top", "random"]
        assert -1 <= r.rf_correlation <= 1 and -1 <= r.truth_correlation <= 1  # simulated: truth known
        assert r.is_linear is not None
        assert 0 <= r.effective_rf.centre[0] < h and 0 <= r.effective_rf.centre[1] < w
        assert np.isfinite(r.sanity_similarity) and r.random_spatial is not None
        assert r.predicted.shape == r.recorded.shape == (2, CONFIG.window_frames)


def test_randomised_twin_differs(twin: Twin) -> None:
    random = randomised_network(twin, seed=0)
    trained = dict(twin.network.named_parameters())
    changed = [n for n, p in random.named_parameters() if p.abs().sum() > 0 and not torch.equal(p, trained[n])]
    assert len(changed) > len(trained) // 2


def test_files_written(reports, twin: Twin) -> None:
    out, results = reports
    h, w = twin.metadata.frame_shape
    for r in results:
        with h5py.File(out / f"cell{r.cell_id}.h5") as f:
            assert f["spatial"].shape == (h, w)
            assert f["temporal"].shape == (CONFIG.window_frames,)
            assert f["attributions"].shape == (2, CONFIG.window_frames, h, w)
            assert f.attrs["cell_id"] == r.cell_id and f.attrs["method"] == "ig"
            assert np.allclose(f["spatial"][()], r.spatial)
            assert list(f["clips/end"][()]) == [c.end for c in r.clips]
        page = (out / f"cell{r.cell_id}.html").read_text()
        assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page)) == 4
        assert f"{r.rf_correlation:.2f}" in page and f"{r.cc:.2f}" in page
        assert "<script" not in page and "http" not in page  # self-contained
    index = (out / "index.html").read_text()
    assert "href='cell0.html'" in index and "href='cell5.html'" in index
    assert "data:image/png;base64," in index
    assert not list(out.glob(".*.part*"))


def test_parse_cells() -> None:
    assert parse_cells("all", (1, 2, 3)) == [1, 2, 3]
    assert parse_cells("3, 1,3", (1, 2, 3)) == [3, 1]
    with pytest.raises(Exception, match="no cells with ids \\[7\\]"):
        parse_cells("7", (1, 2, 3))
    with pytest.raises(ValueError, match="comma-separated"):
        parse_cells("three", (1, 2, 3))


def test_command_line(tiny_twin_dir: Path, tiny_recording: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("attribute")(attribute_command)
    app.command("other")(lambda: None)  # two commands, so "attribute" is a subcommand as in insilico
    runner = CliRunner()
    result = runner.invoke(app, ["attribute", "--model", str(tiny_twin_dir), "--data", str(tiny_recording),
                                 "--cell", "3", "--out", str(tmp_path), "--clips", "1", "--method", "saliency",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "backbone: tiny" in result.output
    assert "--spatial-kernel" in result.output  # a 3 x 3 twin: the user is told how to get local maps
    assert (tmp_path / "cell3.h5").is_file() and (tmp_path / "cell3.html").is_file()
    assert not (tmp_path / "index.html").exists()
    bad = runner.invoke(app, ["attribute", "--model", str(tiny_twin_dir), "--data", str(tiny_recording),
                              "--cell", "999", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "999" in bad.output
    bad = runner.invoke(app, ["attribute", "--model", str(tiny_twin_dir), "--data", str(tiny_recording),
                              "--cell", "3", "--method", "gradcam", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--method" in bad.output
    ig = runner.invoke(app, ["attribute", "--model", str(tiny_twin_dir), "--data", str(tiny_recording),
                             "--cell", "3", "--out", str(tmp_path / "ig"), "--clips", "1", "--ig-steps", "2",
                             "--device", "cpu"])
    assert ig.exit_code == 0, ig.output
    with h5py.File(tmp_path / "ig" / "cell3.h5", "r") as f:
        assert f["clips/gap"].shape == (1,) and np.isfinite(f["clips/gap"][:]).all()
    bad = runner.invoke(app, ["attribute", "--model", str(tiny_twin_dir), "--data", str(tiny_recording),
                              "--cell", "3", "--ig-steps", "0", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--ig-steps" in bad.output
