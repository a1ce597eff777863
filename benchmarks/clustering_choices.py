"""Why the clustering softens the predictions and normalises the columns: ARI of each choice on one run.

    .venv/bin/python benchmarks/clustering_choices.py [--run runs/synthetic_specialists]

Takes the generalist of a finished specialist run whose data set knows its groups, computes the covariance of its
predictions on the training inputs at several temperatures, clusters raw and normalised columns (diagonal zeroed,
unit length) with the run's seed and count, and writes the adjusted Rand index of each to
benchmarks/results/clustering_choices.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from distill.checkpoint import load_checkpoint
from distill.config import load_config
from distill.data import load_dataset, resolve_data_root
from distill.train import predict_logits
from specialists.covariance import CovarianceAccumulator
from specialists.subsets import adjusted_rand_index, find_subsets, normalised_columns

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/synthetic_specialists"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    args = parser.parse_args()
    config = load_config(args.run / "config.yaml")
    data = load_dataset(config.data.name, resolve_data_root(args.data_root), config.data.options)
    generalist, _ = load_checkpoint(args.run / "generalist.pt")
    logits = predict_logits(generalist, data.x_train)
    seed = json.loads((args.run / "metrics.json").read_text())["run"]["seeds"]["clustering"]
    rows = []
    for temperature in args.temperatures:
        accumulator = CovarianceAccumulator(data.num_classes)
        accumulator.update(torch.softmax(logits / temperature, dim=1))
        covariance = accumulator.covariance()
        for normalize in (False, True):
            matrix = normalised_columns(covariance) if normalize else covariance
            subsets = find_subsets(matrix, config.specialists.count, seed=seed)
            sizes = [len(subset) for subset in subsets.subsets]
            rows.append({"temperature": temperature, "normalize": normalize,
                         "ari": adjusted_rand_index(subsets.clusters, data.groups),
                         "smallest_subset": min(sizes), "largest_subset": max(sizes)})
            print(rows[-1])
    (RESULTS / "clustering_choices.json").write_text(json.dumps(
        {"command": f"python benchmarks/clustering_choices.py --run {args.run}", "data": config.data.name,
         "options": config.data.options, "count": config.specialists.count, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
