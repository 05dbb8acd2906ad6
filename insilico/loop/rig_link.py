"""A lazily opened connection to the rig, checked against the twin it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rig_bridge.client import RigClient
from stimuli.errors import InsilicoError


@dataclass
class RigLink:
    """Connects on first use (a run that has nothing left to present never needs the rig).

    `cell_ids`, `frame_shape` and `frame_rate`, when given, must match what the rig reports:
    the spikes it sends are stored as responses of the twin's cells on the twin's screen.
    """

    address: str | None
    keys_dir: Path | None = None
    insecure: bool = False
    timeout_s: float = 30.0
    cell_ids: tuple[int, ...] | None = None
    frame_shape: tuple[int, int] | None = None
    frame_rate: float | None = None
    _client: RigClient | None = field(default=None, repr=False)

    def __call__(self) -> RigClient:
        if self._client is not None:
            return self._client
        if not self.address:
            raise InsilicoError("this protocol presents stimuli: give the rig's address with --rig tcp://HOST:PORT")
        client = RigClient(self.address, self.keys_dir, insecure=self.insecure, timeout_s=self.timeout_s)
        try:
            hello = client.hello()
            self._check(hello.cell_ids, hello.screen, hello.frame_rate)
        except BaseException:
            client.close()
            raise
        self._client = client
        return client

    def _check(self, ids: np.ndarray, screen: tuple[int, int] | None, rate: float) -> None:
        where = f"the rig at {self.address}"
        if self.cell_ids is not None and tuple(int(i) for i in ids) != self.cell_ids:
            raise InsilicoError(f"{where} records {len(ids)} cells {tuple(int(i) for i in ids[:5])}..., the twin models "
                                f"{len(self.cell_ids)} cells {self.cell_ids[:5]}...: connect the rig of this "
                                "preparation (for the simulated rig: the same --sim-seed, --sim-cells, --sim-size)")
        if self.frame_shape is not None and screen is not None and tuple(screen) != tuple(self.frame_shape):
            raise InsilicoError(f"{where} shows {screen[0]}x{screen[1]} px frames, the twin sees "
                                f"{self.frame_shape[0]}x{self.frame_shape[1]} px")
        if self.frame_rate is not None and abs(rate - self.frame_rate) > 1e-9:
            raise InsilicoError(f"{where} runs at {rate} Hz, the twin at {self.frame_rate} Hz")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
