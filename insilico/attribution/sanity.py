"""Adebayo et al. 2018 ("Sanity Checks for Saliency Maps"): the twin with randomised weights.

A map that survives re-initialising every trained weight explains the input, not the model.
The backbone is left as it is: the twin never trained it. A factorized readout's masks start at
the recorded receptive fields, so they carry the data too: they are redrawn as noise (a DoG
readout's centres, anywhere on the grid).
"""

from __future__ import annotations

import torch
from torch import nn

from vist_model.readout import DoGReadout, FactorizedReadout
from vist_model.twin import Twin, build_network


def randomised_network(twin: Twin, seed: int = 0) -> nn.Module:
    """A freshly initialised network of the twin's kind and config, on the twin's device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(twin.metadata)
        for module in network.modules():
            if isinstance(module, FactorizedReadout):
                nn.init.normal_(module.spatial, 0.0, 1.0 / module.spatial[0].numel())
            elif isinstance(module, DoGReadout):
                with torch.no_grad():
                    module.centre.uniform_(0.0, 1.0).mul_(torch.tensor([module.height - 1, module.width - 1]))
    return network.to(twin.device).eval()
