"""One core across retinas: per-recording readouts, namespaced cells, a new retina fitted on a frozen core."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from insilico.cli import app
from rig_bridge.retina.recording import SimulationConfig, simulate_recording
from stimuli.recording import open_recording
from vist_model.core import CORE_FITTING, _core_maps, _ReadoutOnMaps, fit_on_core, load_core
from vist_model.data import Block
from vist_model.features import FeatureCache
from vist_model.fit_twin import loss_for
from vist_model.multi import (
    CORE_MODULES,
    SharedCoreTwin,
    balanced_windows,
    batch_order,
    fit_shared,
    tie_cores,
    train_shared_core,
)
from vist_model.readout import grid_centres
from vist_model.train import TrainConfig
from vist_model.twin import Twin, build_network
from vist_model.vist import ViST, vist_config

# One epoch of short windows: the point is the wiring, not the fit.
QUICK = TrainConfig(epochs=1, warmup_epochs=1, window=32, batch_size=4, coverage=1.0, bf16=False)


def _record(path: Path, cells: int, size: int, seed: int) -> Path:
    return simulate_recording(path, SimulationConfig(n_cells=cells, size=size, seed=seed, train_seconds=8,
                                                     test_seconds=3, test_repeats=3, noise_seconds=6))


@pytest.fixture(scope="module")
def retinas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three simulated retinas of different sizes and cell counts: two for the core, one new."""
    d = tmp_path_factory.mktemp("retinas")
    return {"A": _record(d / "A.h5", 6, 32, 1), "B": _record(d / "B.h5", 9, 40, 2), "new": _record(d / "new.h5", 5, 32, 3)}


@pytest.fixture(scope="module")
def cache(feature_cache_dir: Path) -> FeatureCache:
    return FeatureCache(feature_cache_dir)


@pytest.fixture(scope="module")
def core_dir(retinas: dict[str, Path], cache: FeatureCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "core"
    train_shared_core([(retinas["A"], ["mov1"]), (retinas["B"], ["mov1"])], out, config=QUICK, device="cpu",
                      cache=cache)
    return out


@pytest.fixture(scope="module")
def fitted_dir(core_dir: Path, retinas: dict[str, Path], cache: FeatureCache,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "new"
    fit_on_core(core_dir, retinas["new"], ["mov1"], out, config=replace(CORE_FITTING, **_quick()), device="cpu",
                cache=cache)
    return out


def _quick() -> dict:
    return dict(epochs=1, warmup_epochs=1, window=32, batch_size=4, coverage=1.0, bf16=False)


def _core_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if k.split(".")[0] in CORE_MODULES}


def test_one_core_a_readout_per_recording(core_dir: Path, retinas: dict[str, Path]) -> None:
    shared = SharedCoreTwin.load(core_dir)
    assert shared.names == ("A", "B")
    a, b = shared.twin("A"), shared.twin("B")
    for name in CORE_MODULES:  # tied again on loading: one set of weights
        assert getattr(a.network, name) is getattr(b.network, name)
    assert a.network.readout is not b.network.readout
    assert (a.metadata.n_cells, b.metadata.n_cells) == (6, 9)
    # Each recording's RF maps condition AdaLN: the conditioning inputs differ.
    assert not torch.equal(a.network.conditioning(), b.network.conditioning())
    for name, twin in (("A", a), ("B", b)):
        with open_recording(retinas[name]) as rec:
            assert twin.metadata.cell_ids == tuple(int(i) for i in rec.cell_ids)
        acc = twin.metadata.accuracy  # evaluated per recording, on its own held-out segment
        assert acc is not None and acc.segment == "mov2" and len(acc.cells) == twin.metadata.n_cells
        assert twin.metadata.training["shared_core"]["recording"] == name


def test_cells_are_namespaced_by_recording(core_dir: Path) -> None:
    shared = SharedCoreTwin.load(core_dir)
    a, b = shared.twin("A").metadata.cell_ids, shared.twin("B").metadata.cell_ids
    assert shared.cell_labels == tuple(f"A:{i}" for i in a) + tuple(f"B:{i}" for i in b)
    only_b = next(i for i in b if i not in a)  # both count from 0 with a 42 among them; B has more cells
    assert shared.locate(f"B:{only_b}") == ("B", only_b)
    with pytest.raises(KeyError, match=f"no cell with id {only_b}"):
        shared.locate(f"A:{only_b}")
    with pytest.raises(KeyError, match="no recording 'C'"):
        shared.locate(f"C:{a[0]}")
    with pytest.raises(ValueError, match="recording:id"):
        shared.locate("42")


def test_the_core_folder_names_the_twin_to_load(core_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="a core shared by recordings A, B"):
        Twin.load(core_dir)
    twin = Twin.load(core_dir / "B")  # one recording's twin is a normal twin
    assert twin.predict(np.zeros((10, 40, 40), np.uint8)).shape == (10, 9)


def test_design_and_attribute_name_a_cell_of_the_core_by_recording(core_dir: Path, retinas: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    runner = CliRunner()
    a, b = (Twin.load(core_dir / n).metadata.cell_ids for n in ("A", "B"))
    only_b = next(i for i in b if i not in a)
    design = ["optimize", "--model", str(core_dir), "--method", "gradient", "--frames", "6", "--window", "2",
              "--seeds", "1", "--steps", "1", "--start-from", "grey", "--out", str(tmp_path / "d")]
    result = runner.invoke(app, [*design, "--cell", f"B:{only_b}"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / f"cell{only_b}.h5").is_file()  # B's twin designed it: A has no such cell
    refusals = [
        (["--cell", str(only_b)], "is a shared core of recordings A, B"),
        (["--cells", f"A:{a[0]},B:{only_b}"], "shown to one retina"),
        (["--cell", f"C:{a[0]}"], "no recording 'C'"),
        (["--cell", f"A:{only_b}"], f"no cells with ids [{only_b}]"),
    ]
    for args, message in refusals:
        result = runner.invoke(app, [*design, *args])
        assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
    result = runner.invoke(app, [*design[:2], str(core_dir / "A"), *design[3:], "--cell", f"A:{a[0]}"])
    assert result.exit_code != 0 and "twin of one recording" in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["attribute", "--model", str(core_dir), "--data", str(retinas["B"]),
                                 "--cell", f"B:{only_b}", "--clips", "1", "--method", "saliency",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / f"cell{only_b}.html").is_file()


def test_sampling_balances_recordings() -> None:
    def blocks(frames: int) -> list[Block]:
        return [Block(np.zeros((frames, 1), np.float32), np.zeros((frames, 2), np.float32))]

    cfg = TrainConfig(window=20, batch_size=4, coverage=2.0)
    data = balanced_windows({"long": blocks(2000), "short": blocks(100)}, cfg)
    assert len(data["long"]) == len(data["short"]) == 105  # 2 x 2100 / 20, split equally
    order = batch_order(data, cfg.batch_size, seed=0, epoch=0)
    assert order.count("long") == order.count("short") == 27
    assert order != sorted(order) and order != batch_order(data, cfg.batch_size, seed=0, epoch=1)


def test_a_new_retina_fitted_with_the_core_frozen(core_dir: Path, fitted_dir: Path, retinas: dict[str, Path]) -> None:
    source = SharedCoreTwin.load(core_dir).core
    fitted = Twin.load(fitted_dir)
    core_before, core_after = _core_state(source), _core_state(fitted.network)
    assert core_before.keys() == core_after.keys() and core_before
    for k in core_before:  # bit for bit
        assert torch.equal(core_before[k], core_after[k]), k
    # The readout was trained, starting from masks at the new cells' recorded RFs.
    untrained = build_network(fitted.metadata)
    assert torch.equal(untrained.rf_maps, fitted.network.rf_maps)
    side = untrained.readout.spatial.shape[-1]
    peaks = untrained.readout.spatial.flatten(1).argmax(1)
    centres = grid_centres(untrained.rf_maps, margin=0).round().clamp(0, side - 1).long()
    assert torch.equal(peaks, centres[:, 0] * side + centres[:, 1])
    assert not torch.equal(untrained.readout.features, fitted.network.readout.features)
    with open_recording(retinas["new"]) as rec:
        assert fitted.metadata.cell_ids == tuple(int(i) for i in rec.cell_ids)
    record = fitted.metadata.training["core"]
    assert record["recordings"] == ["A", "B"] and record["finetune_core"] is False
    assert fitted.metadata.accuracy is not None and fitted.metadata.accuracy.segment == "mov2"
    rates = fitted.predict(np.full((12, 32, 32), 128, np.uint8))
    assert rates.shape == (12, 5) and np.isfinite(rates).all()
    # Differentiable end to end, as design and attribution use it.
    frames = torch.full((1, 6, 32, 32), 0.5, requires_grad=True)
    fitted.differentiable()(frames)[0, -1, 0].backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0


def test_finetune_core_moves_the_core(core_dir: Path, retinas: dict[str, Path], cache: FeatureCache,
                                      tmp_path: Path) -> None:
    run = fit_on_core(core_dir, retinas["new"], ["mov1"], tmp_path / "ft", config=replace(CORE_FITTING, **_quick()),
                      finetune_core=True, finetune_config=TrainConfig(**_quick(), lr=1e-3), device="cpu", cache=cache)
    source = _core_state(load_core(core_dir).twin.network)
    after = _core_state(run.twin.network)
    assert any(not torch.equal(source[k], after[k]) for k in source)
    assert len(run.twin.metadata.training["core"]["stages"]) == 2 and run.result.epochs_run == 2


def test_a_single_recording_twin_is_a_core(tiny_twin_dir: Path, retinas: dict[str, Path], cache: FeatureCache,
                                           tmp_path: Path) -> None:
    # Twins trained before shared cores existed load as they did and lend their core.
    old = Twin.load(tiny_twin_dir)
    run = fit_on_core(tiny_twin_dir, retinas["new"], ["mov1"], tmp_path / "n", config=replace(CORE_FITTING, **_quick()),
                      device="cpu", cache=cache)
    for k, v in _core_state(old.network).items():
        assert torch.equal(v, _core_state(run.twin.network)[k])


def test_cli_refusals_name_the_flag(retinas: dict[str, Path], core_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["--data", str(retinas["new"]), "--finetune-core"], "--finetune-core fine-tunes a core given with --core"),
        (["--data", str(retinas["A"]), "--data", str(retinas["B"]), "--core", str(core_dir)], "give one --data"),
        (["--data", str(retinas["new"]), "--core", str(core_dir), "--readout", "dense"], "takes its architecture"),
        (["--data", str(retinas["A"]), "--data", str(retinas["B"]), "--model", "ln"], "a shared core is a Vi-ST core"),
        (["--data", str(retinas["new"]), "--core", str(tmp_path / "nowhere")], "no such run folder"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and message in result.output, result.output


def test_recordings_named_twice_are_refused(retinas: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"named twice"):
        train_shared_core([(retinas["A"], ["mov1"]), (retinas["A"], ["mov1"])], tmp_path / "c", config=QUICK)


@pytest.mark.slow
def test_fitted_twins_design_as_an_ensemble(core_dir: Path, fitted_dir: Path, tiny_twin_dir: Path,
                                            retinas: dict[str, Path], cache: FeatureCache, tmp_path: Path) -> None:
    # Cores of two runs (seeds), the same new retina fitted onto each: one ensemble for design.
    from insilico.design.run import load_twins, optimize_cells
    from insilico.design.settings import design_settings

    other = tmp_path / "new_on_tiny"
    fit_on_core(tiny_twin_dir, retinas["new"], ["mov1"], other, config=replace(CORE_FITTING, **_quick()),
                device="cpu", cache=cache)
    twins = load_twins([fitted_dir, other], device="cpu")
    cell = twins[0].metadata.cell_ids[0]
    results = optimize_cells(twins, [cell], tmp_path / "designs",
                             design_settings(method="gradient", n_frames=6, window_frames=2, seeds=1, steps=1))
    assert results[0].cell_id == cell and Path(results[0].paths["design"]).is_file()


def test_the_readout_on_cached_maps_is_the_network(tmp_path: Path) -> None:
    # The readout is fitted on the core's maps computed once, in chunks with their history:
    # what it sees must be what the whole network computes in one pass.
    net = ViST(vist_config("cpu", n_cells=3, in_channels=8, grid=4), torch.rand(3, 4, 4)).eval()
    features = np.random.default_rng(0).standard_normal((150, 8, 4, 4)).astype(np.float32)
    maps = _core_maps(net, features, tmp_path / "maps.npy", torch.device("cpu"), chunk=40)
    with torch.no_grad():
        on_maps = _ReadoutOnMaps(net)(torch.from_numpy(np.asarray(maps))[None])
        whole = net(torch.from_numpy(features)[None])
    assert torch.allclose(on_maps, whole, atol=1e-5)
    assert [n for n, _ in _ReadoutOnMaps(net).named_parameters()] == [
        "readout.centre", "readout.log_sigma", "readout.log_ratio", "readout.surround_logit", "readout.features",
        "readout.bias"]


def test_shared_training_resumes_and_trains_one_core(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def recording(n_cells: int) -> tuple[ViST, list[Block]]:
        net = ViST(vist_config("cpu", n_cells=n_cells, in_channels=8, grid=4), torch.rand(n_cells, 4, 4))
        x = rng.standard_normal((120, 8, 4, 4)).astype(np.float32)
        y = rng.poisson(1.0, (120, n_cells)).astype(np.float32)
        return net, [Block(x, y)]

    (a, train_a), (b, train_b) = recording(3), recording(5)
    tie_cores([a, b])
    loss = loss_for("vist", a.config.to_dict())
    cfg = TrainConfig(epochs=2, warmup_epochs=1, window=32, batch_size=2, bf16=False)
    start = {k: v.clone() for k, v in _core_state(a).items()}
    state = tmp_path / "train_state.pt"
    once = fit_shared({"A": a, "B": b}, loss, {"A": train_a, "B": train_b}, {"A": train_a[:1], "B": []},
                      replace(cfg, epochs=1), device=torch.device("cpu"), state_path=state)
    assert state.is_file() and once.epochs_run == 1
    again = fit_shared({"A": a, "B": b}, loss, {"A": train_a, "B": train_b}, {"A": train_a[:1], "B": []}, cfg,
                       device=torch.device("cpu"), state_path=state)
    assert again.epochs_run == 2 and again.train_loss[0] == once.train_loss[0]  # epoch 1 was not run again
    assert a.tcn is b.tcn and any(not torch.equal(start[k], v) for k, v in _core_state(b).items())
