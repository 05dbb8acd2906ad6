"""Ground-truth simulated retina (numpy/scipy only): cells, population, responses, optimum.

Modules: ``cells`` (types, specs, filters), ``population`` (mosaics, ids), ``circuit``
(compiled causal computation), ``calibration`` (gains), ``spiking`` (counts),
``movies`` (natural-like test movies), ``optimum`` (true optimal stimuli),
``reliability`` (split-half), ``simulated`` (:class:`SimulatedRetina`).
The public API is re-exported by :mod:`rig_bridge.simulated_retina`.
"""
