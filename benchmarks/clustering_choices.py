"""Why the clustering softens the predictions and normalises the columns: ARI of each choice on one run.

    python benchmarks/clustering_choices.py [--run runs/synthetic_specialists] [--out benchmarks/results]

Takes the generalist of a finished specialist run whose data set knows its groups, computes the covariance of its
predictions on the training inputs at several temperatures, clusters raw and normalised columns (diagonal zeroed,
unit length) with the run's seed and count, and writes the adjusted Rand index of each to
benchmarks/results/clustering_choices.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill.checkpoint import load_checkpoint
from distill.config import load_config
from distill.data import load_dataset, resolve_data_root
from distill.train import predict_logits
from distillery.benchmark import parser, write_result
from distillery.metrics import read_metrics
from distillery.run_folder import CONFIG, METRICS
from specialists.covariance import CovarianceAccumulator
from specialists.subsets import adjusted_rand_index, find_subsets, normalised_columns


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--run", type=Path, default=Path("runs/synthetic_specialists"))
    arguments.add_argument("--data-root", default=None)
    arguments.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    args = arguments.parse_args()
    config = load_config(args.run / CONFIG)
    data = load_dataset(config.data.name, resolve_data_root(args.data_root), config.data.options)
    generalist, _ = load_checkpoint(args.run / "generalist.pt")
    logits = predict_logits(generalist, data.x_train)
    seed = read_metrics(args.run / METRICS).run.seeds["clustering"]
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
    write_result(args.out, "clustering_choices", {"data": config.data.name, "options": config.data.options,
                                                  "count": config.specialists.count, "rows": rows})


if __name__ == "__main__":
    main()
