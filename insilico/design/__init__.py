"""Stimulus design through the twin: most exciting inputs by gradient ascent or Optuna search.

`insilico optimize` and `insilico verify` are thin layers over `insilico.design.run` and
`insilico.design.verify`:

    from insilico.design.run import optimize_cells
    from insilico.design.verify import verify_design
    results = optimize_cells("runs/m1", [42], "designs/", method="both")

One module per job: `response` (the twin as a differentiable function of a clip, after a
grey screen), `transforms`, `objectives`, `regularisers`, `preconditioners`, `envelope` (the
window around the cell's receptive field), `postprocess` (the contrast budget), `gradient`
(the step loop), `parametric` (Optuna over stimulus families), `budget`, `natural_control`,
`outputs`, `verify`, `run` and `cli`.
"""
