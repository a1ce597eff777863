"""Finding specialist subsets at JFT scale: C = 15,000 classes, N = 100,000 generalist predictions.

    python benchmarks/clustering.py [--out benchmarks/results]

Goal: covariance and clustering within 5 minutes and 8 GiB peak memory on this machine. The predictions are
synthetic and streamed (never N x C at once): the classes fall into hidden groups; each row draws a true class
and gets logits noise * randn + group_bump on its group's classes + true_bump more on the true class, softmaxed
at T, so predictions are peaked but spread their rest over a few (random, per row) classes of the same group, as
a generalist confuses similar classes. The rows stream into a top-k `CovarianceAccumulator`; k-means on the
`normalised_columns` of the covariance should recover the groups (adjusted Rand index against them, 1 = exact).
Generation is timed apart: a real run pays for the generalist's forward pass instead.

`--exact-rows N` (0: off) also accumulates the first N rows exactly (N * C^2 multiply-adds, 2.25 TFLOP for the
default 5,000 rows, about 30 s here) to report how far top-k moves the covariance; it runs after the main
measurement, so the main peak memory is read before it.
"""

from __future__ import annotations

import logging
import resource
import time

import torch

from distillery.benchmark import parser, write_result
from specialists.covariance import CovarianceAccumulator
from specialists.subsets import adjusted_rand_index, find_subsets, normalised_columns

log = logging.getLogger("clustering")


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def hidden_groups(num_classes: int, count: int, seed: int) -> torch.Tensor:
    """(C,) group of each class: a random assignment with group sizes differing by at most one."""
    return torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)) % count


def predictions(groups: torch.Tensor, rows: int, args, generator: torch.Generator) -> torch.Tensor:
    """(rows, C) float32 generalist-like probabilities (see the module docstring)."""
    true = torch.randint(len(groups), (rows,), generator=generator)
    logits = torch.randn(rows, len(groups), generator=generator).mul_(args.noise)
    logits += args.group_bump * (groups[None, :] == groups[true][:, None])
    logits[torch.arange(rows), true] += args.true_bump
    return torch.softmax(logits / args.temperature, dim=1)


def accumulate(groups: torch.Tensor, rows: int, args, top_k: int | None) -> tuple[CovarianceAccumulator, dict]:
    """Stream `rows` predictions into an accumulator, timing generation and accumulation apart.

    Seeded by args.seed alone, so an exact and a top-k pass over the same rows see the same predictions.
    """
    accumulator = CovarianceAccumulator(len(groups), top_k=top_k)
    generator = torch.Generator().manual_seed(args.seed + 1)
    generating = adding = 0.0
    for start in range(0, rows, args.batch):
        started = time.perf_counter()
        probs = predictions(groups, min(args.batch, rows - start), args, generator)
        generated = time.perf_counter()
        accumulator.update(probs)
        generating, adding = generating + generated - started, adding + time.perf_counter() - generated
    return accumulator, {"generate_seconds": round(generating, 2), "accumulate_seconds": round(adding, 2)}


def cluster(columns: torch.Tensor, groups: torch.Tensor, algorithm: str, count: int) -> dict:
    """Time one `find_subsets` run and score its clusters against the hidden groups."""
    started = time.perf_counter()
    subsets = find_subsets(columns, count=count, algorithm=algorithm)
    seconds = time.perf_counter() - started
    sizes = [len(subset) for subset in subsets.subsets]
    return {"seconds": round(seconds, 2), "ari": round(adjusted_rand_index(subsets.clusters, groups), 4),
            "subset_sizes_min_max": [min(sizes), max(sizes)], "peak_rss_gib_after": peak_rss_gib()}


def max_abs_difference(reference: torch.Tensor, accumulator: CovarianceAccumulator, chunk: int = 1000) -> float:
    """max |reference - accumulator.covariance()|, a block of rows at a time.

    Why not covariance() itself: with `reference` alive its C x C temporaries would take the peak past 8 GiB.
    """
    mean = accumulator.total / accumulator.count
    largest = 0.0
    for start in range(0, len(reference), chunk):
        rows = slice(start, start + chunk)
        block = accumulator.outer[rows] / accumulator.count - torch.outer(mean[rows], mean)
        largest = max(largest, (reference[rows] - block).abs().max().item())
    return largest


def exact_against_top_k(groups: torch.Tensor, args) -> dict:
    """Exact against top-k accumulation of the first args.exact_rows rows: how far top-k moves the covariance.

    Clustering both matrices as well would take two more k-means runs (minutes each at C = 15,000).
    """
    started = time.perf_counter()
    exact, timing = accumulate(groups, args.exact_rows, args, top_k=None)
    reference = exact.covariance()
    del exact
    top_k, _ = accumulate(groups, args.exact_rows, args, top_k=args.top_k)
    return {"rows": args.exact_rows, "exact_accumulate_seconds": timing["accumulate_seconds"],
            "max_abs_covariance_difference": max_abs_difference(reference, top_k),
            "max_abs_covariance": reference.abs().max().item(), "dropped_mass": round(top_k.dropped_mass, 4),
            "seconds": round(time.perf_counter() - started, 1), "peak_rss_gib_after": peak_rss_gib()}


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--classes", type=int, default=15_000)
    arguments.add_argument("--rows", type=int, default=100_000, help="N, the predictions streamed")
    arguments.add_argument("--groups", type=int, default=61, help="hidden groups, and the subsets asked for")
    arguments.add_argument("--batch", type=int, default=2_000)
    arguments.add_argument("--top-k", type=int, default=64)
    arguments.add_argument("--noise", type=float, default=2.0, help="std of the logit noise")
    arguments.add_argument("--group-bump", type=float, default=7.0)
    arguments.add_argument("--true-bump", type=float, default=8.0, help="on top of the group bump")
    arguments.add_argument("--temperature", type=float, default=1.0)
    arguments.add_argument("--algorithms", nargs="+", default=["kmeans", "online"])
    arguments.add_argument("--exact-rows", type=int, default=5_000, help="rows for the exact check (0: skip it)")
    arguments.add_argument("--seed", type=int, default=0)
    args = arguments.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    groups = hidden_groups(args.classes, args.groups, args.seed)

    accumulator, streaming = accumulate(groups, args.rows, args, top_k=args.top_k)
    dropped = accumulator.dropped_mass
    log.info("streamed %d rows: %s, dropped mass %.4f", args.rows, streaming, dropped)
    started = time.perf_counter()
    covariance = accumulator.covariance()
    covariance_seconds = time.perf_counter() - started
    del accumulator
    started = time.perf_counter()
    columns = normalised_columns(covariance)
    normalise_seconds = time.perf_counter() - started
    del covariance
    clustering = {}
    for algorithm in args.algorithms:
        clustering[algorithm] = cluster(columns, groups, algorithm, args.groups)
        log.info("%s: %s", algorithm, clustering[algorithm])
    del columns
    main_peak = peak_rss_gib()
    fixed = streaming["accumulate_seconds"] + covariance_seconds + normalise_seconds
    totals = {algorithm: round(fixed + result["seconds"], 1) for algorithm, result in clustering.items()}
    exact = exact_against_top_k(groups, args) if args.exact_rows else None

    result = {
        "goal": "accumulate + covariance + clustering <= 300 s and <= 8 GiB peak RSS",
        "configuration": {"classes": args.classes, "rows": args.rows, "groups": args.groups, "batch": args.batch,
                          "top_k": args.top_k, "noise": args.noise, "group_bump": args.group_bump,
                          "true_bump": args.true_bump, "temperature": args.temperature, "seed": args.seed},
        **streaming, "dropped_mass": round(dropped, 4),
        "covariance_seconds": round(covariance_seconds, 2), "normalise_seconds": round(normalise_seconds, 2),
        "clustering": clustering,
        "total_seconds_without_generation": totals,
        "total_seconds_with_generation": {name: round(seconds + streaming["generate_seconds"], 1)
                                          for name, seconds in totals.items()},
        "peak_rss_gib": main_peak, "exact_against_top_k": exact,
        "torch_threads": torch.get_num_threads(),
    }
    path = write_result(args.out, "clustering", result)
    log.info("total without generation %s s (generation %.1f s), peak RSS %.2f GiB, ARI %s -> %s", totals,
             streaming["generate_seconds"], main_peak,
             {name: entry["ari"] for name, entry in clustering.items()}, path)


if __name__ == "__main__":
    main()
