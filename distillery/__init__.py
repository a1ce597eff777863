"""Distillery's orchestration: the `distillery` command, the pipeline that runs the stages in order, the run
folder (manifests, metrics.json, report) and the progress display.

It sits on top of the three layers it drives, which never import it: `distill` (the distillation core),
`ensembles` (many models on Ray) and `specialists` (clusters, specialists, eq. 5). docs/design.md has the map.
"""

from pathlib import Path

# The demo, shipped with the package (a link to configs/demo.yaml in the repository): what `distillery run` and
# `distillery sweep` run without a CONFIG.
DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
