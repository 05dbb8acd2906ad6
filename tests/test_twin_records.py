"""A twin's metadata read through typed records: training, network and backbone; old layouts still read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vist_model.baselines import LNConfig
from vist_model.provenance import TrainingDataMissing, TrainingRecord, data_record
from vist_model.twin import TwinMetadata, baseline_config
from vist_model.vist import ViSTConfig


def _meta(kind: str, network: dict, **kw: object) -> TwinMetadata:
    return TwinMetadata(kind=kind, cell_ids=(4, 9), frame_rate=30.0, frame_shape=(8, 8), rf=np.zeros((2, 8, 8)),
                        rf_source="test", network=network, **kw)


def test_training_record_reads_what_checkpoints_store(tmp_path: Path) -> None:
    data = tmp_path / "sim.h5"
    data.write_bytes(b"recording")
    meta = _meta("ln", baseline_config("ln", 2, 8, 8),
                 training={**data_record(data), "train_segments": ["mov1"], "spec": {"kind": "ln"}, "extra": 1})
    record = meta.training_record
    assert record.segments == ("mov1",) and record.data == str(data.resolve()) and record.spec == {"kind": "ln"}
    assert record.recording() == data.resolve() and record.stored["extra"] == 1
    data.unlink()
    with pytest.raises(TrainingDataMissing, match="is gone"):
        record.recording()
    # A twin saved without a training record (older, or built in code) names none.
    empty = TrainingRecord.from_json({})
    assert empty.data is None and empty.segments == () and empty.recording() is None


def test_network_and_backbone_are_typed() -> None:
    ln = _meta("ln", baseline_config("ln", 2, 8, 8))
    assert isinstance(ln.network_config, LNConfig) and ln.backbone_spec is None
    assert ln.describe_backbone().startswith("none")
    # A Vi-ST config stored before `spatial_kernel` existed reads with its default.
    stored = ViSTConfig(n_cells=2, in_channels=8, grid=16).to_dict()
    stored.pop("spatial_kernel")
    backbone = {"name": "tiny", "source": "random", "pretrained": False, "hidden_size": 8, "grid": 16,
                "fingerprint": "abc"}
    vist = _meta("vist", stored, backbone=backbone)
    assert vist.network_config.spatial_kernel == ViSTConfig.spatial_kernel and vist.network_config.grid == 16
    assert vist.backbone_spec.hidden_size == 8 and "random (no visual prior)" in vist.describe_backbone()
