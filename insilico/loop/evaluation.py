"""The held-out movie a protocol scores its twin on, and the fine-tuning it runs (no torch at import).

Shared by the closed loop (`closed_loop`) and the `finetune` protocol (`runner`); torch and the
twin's evaluation load only when a function that needs them runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insilico.loop.protocol import ClosedLoopProtocol, FinetunePlan, FinetuneProtocol
from stimuli.errors import InsilicoError
from stimuli.recording import open_recording
from vist_model.provenance import TrainingDataMissing

if TYPE_CHECKING:
    from vist_model.features import FeatureCache
    from vist_model.train import TrainConfig
    from vist_model.twin import Twin


def seconds_since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def heldout_source(protocol: ClosedLoopProtocol | FinetuneProtocol, twin: Twin) -> tuple[Path, str]:
    """The held-out recording and segment (default: the twin's own training recording)."""
    data = protocol.evaluation.data or twin_training_recording(twin, "[evaluation] data")
    if not Path(data).is_file():
        raise FileNotFoundError(f"held-out recording {data} not found (set [evaluation] data in the protocol)")
    with open_recording(data) as rec:
        names = [s.name for s in rec.segments]
    segment = protocol.evaluation.segment
    if segment not in names:
        raise InsilicoError(f"held-out segment {segment!r} is not in {data} (segments: {', '.join(names)})")
    try:
        trained_on = twin_training_recording(twin, "[evaluation] data")
    except InsilicoError:
        trained_on = None  # gone: then it cannot be the held-out recording named here
    if (trained_on is not None and trained_on.resolve() == Path(data).resolve()
            and segment in twin.metadata.training_record.segments):
        raise InsilicoError(f"held-out segment {segment!r} is one the twin was trained on: choose another")
    return Path(data), segment


def twin_training_recording(twin: Twin, setting: str) -> Path:
    """The twin's training recording, found where it was stored (or moved to the current folder).

    `setting` is the protocol key that names another recording instead, for the error.
    """
    try:
        data = twin.metadata.training_record.recording()
    except TrainingDataMissing as err:
        raise InsilicoError(f"{err}: set {setting} in the protocol") from None
    if data is None:
        raise InsilicoError(f"the twin does not name its training recording: set {setting} in the protocol")
    return data


def training_recording_and_segments(twin: Twin, setting: str) -> tuple[Path, list[str]]:
    """The twin's training recording and its training segments (fine-tuning on the training data)."""
    data = twin_training_recording(twin, setting)
    segments = list(twin.metadata.training_record.segments)
    if not segments:
        raise InsilicoError(f"the twin does not name its training segments: set {setting} in the protocol")
    return data, segments


def evaluation_record(twin: Twin, data: Path, segment: str, cache: FeatureCache) -> dict[str, Any]:
    """The twin's accuracy on a held-out segment, as the run state records it."""
    from vist_model.evaluate import evaluate_twin

    t0 = time.perf_counter()
    ev = evaluate_twin(twin, data, segment, cache=cache)
    summary = ev.to_json_dict()
    return {"data": str(data), "segment": segment, "cc_mean": summary["cc_mean"], "feve_mean": summary["feve_mean"],
            "cc": [float(c) for c in ev.metrics.cc], "seconds": seconds_since(t0)}


def finetune_config(plan: FinetunePlan) -> TrainConfig:
    """The training settings of a fine-tuning: no early stopping inside a round (the protocol names the epochs)."""
    from vist_model.train import TrainConfig

    return TrainConfig(epochs=plan.epochs, window=plan.window, lr=plan.lr, warmup_epochs=plan.warmup_epochs,
                       batch_size=plan.batch_size, readout_only=plan.readout_only, seed=plan.seed,
                       patience=plan.epochs + 1, final_lr=min(1e-4, plan.lr))


def val_fraction_for(recordings: list[tuple[Path, list[str]]], window: int) -> float:
    """Hold out 10% for validation only if every segment stays long enough to train on.

    Presented clips are short (one design each): carving validation frames from them would
    leave nothing of the window length to learn from, so then all frames train.
    """
    for path, segments in recordings:
        with open_recording(path) as rec:
            if any(rec.segment(s).n_frames < 4 * window for s in segments):
                return 0.0
    return 0.1
