"""Distillery's orchestration: the `distillery` command, the pipeline that runs the stages in order, the run
folder (manifests, metrics.json, report) and the progress display.

It sits on top of the three layers it drives, which never import it: `distill` (the distillation core),
`ensembles` (many models on Ray) and `specialists` (clusters, specialists, eq. 5). docs/design.md has the map.
"""
