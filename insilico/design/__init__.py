"""Stimulus design through the twin: most exciting inputs by gradient ascent or Optuna search.

`insilico optimize` and `insilico verify` are thin layers over `insilico.design.run` and
`insilico.design.verify`:

    from insilico.design.run import load_twins, optimize_cells
    from insilico.design.verify import verify_design
    from insilico.design.settings import design_settings
    results = optimize_cells(load_twins("runs/m1"), [42], "designs/", design_settings(method="both"))

Every setting and its default is in `settings` (`DesignSettings`, `GradientConfig`); the CLI,
a protocol's `[design]` table and the demo build them there.

One module per job: `response` (the twin as a differentiable function of a clip, after a
grey screen), `transforms`, `objectives`, `regularizers`, `preconditioners`, `envelope` (the
window around the cell's receptive field), `postprocess` (the contrast budget), `gradient`
(the step loop), `parametric` (Optuna over stimulus families), `budget`, `natural_control`,
`outputs`, `prior` (the twin's attribution map, the design's prior), `verify`, `settings`,
`run` and `cli`.
"""
