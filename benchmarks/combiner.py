"""The eq. 5 combiner: EM against the paper's gradient descent, and its cost next to the networks' forward pass.

    python benchmarks/combiner.py [--out benchmarks/results]

(a) Solvers. At C = 1,000 and C = 15,000 classes, on one synthetic batch: peaked generalist probabilities
(softmax of 3 * randn logits), specialists on random overlapping subsets (each S classes drawn independently,
as the paper's 61 subsets of 300 overlap on JFT), each specialist's output a random softmax (3 * randn) over
S + 1 outputs, dustbin last. Exactly 10 specialists are active for every input: the 10 whose subsets hold the
most generalist probability (a top-n rule would give a varying count). float64 throughout; `solve_em` (default
tol) and `solve_gradient` (its defaults: Adam, 2,000 steps) are timed on the same batch and compared by
max |q_em - q_gd| and by the summed objective. Goal: EM at least 50x faster than gradient descent. The same
batch in float32 through `lumped_batch` and `solve_lumped` (what the combiner runs) is compared with the dense
float64 EM: goal max |dq| <= 1e-6.

(b) Share of inference. A generalist MLP (784-1200-1200-C) and one specialist of the same body per subset of a
random partition of the classes into subsets of S (|S| + 1 outputs), on B = 1,024 inputs: the generalist's
forward, each active specialist's forward on its active rows only (`active_specialists`, top_n = 1: exactly one
per input; top_n = 10: the specialists of the generalist's 10 best classes), and two combiners: the dense one,
`specialist_batch` ("assemble") and `solve_em` ("solve", float64, on all C classes), and the one the combiner
runs, `lumped_batch` and `solve_lumped` (float32, each row's active subsets plus one lumped class). The last
layers are scaled so logits have std 3: an untrained network's near-uniform outputs would make EM's work unlike a
trained one's. Result: combiner seconds over generalist + specialists seconds (median over interleaved repeats);
goal: <= 0.5 at C = 15,000 with about 9 active specialists per input (top_n = 10).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from distill.models import create_model
from distillery.benchmark import parser, write_result
from specialists.eq5 import (active_specialists, lumped_batch, objective, solve_em, solve_gradient, solve_lumped,
                             specialist_batch)

SOLVER_CASES = [{"classes": 1_000, "specialists": 20, "size": 50, "batch": 256},
                {"classes": 15_000, "specialists": 61, "size": 300, "batch": 64}]
SHARE_CASES = [{"classes": 1_000, "size": 50}, {"classes": 15_000, "size": 300}]
INPUT, HIDDEN, LOGIT_STD = 784, [1200, 1200], 3.0
log = logging.getLogger("combiner")


def peaked(rows: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    """Random distributions as peaked as a trained network's: softmax of 3 * standard normal logits (float64)."""
    return torch.softmax(torch.randn(rows, columns, generator=generator, dtype=torch.float64) * LOGIT_STD, dim=1)


def solver_problem(case: dict, active_per_input: int, seed: int):
    """The generalist probabilities (B, C), subsets, active mask (B, M) and specialist outputs of part (a)."""
    generator = torch.Generator().manual_seed(seed)
    classes, batch = case["classes"], case["batch"]
    generalist = peaked(batch, classes, generator)
    subsets = [sorted(torch.randperm(classes, generator=generator)[: case["size"]].tolist())
               for _ in range(case["specialists"])]
    membership = torch.zeros(len(subsets), classes, dtype=torch.float64)
    for m, subset in enumerate(subsets):
        membership[m, subset] = 1.0
    chosen = (generalist @ membership.T).topk(active_per_input, dim=1).indices
    active = torch.zeros(batch, len(subsets), dtype=torch.bool).scatter_(1, chosen, True)
    outputs = {m: peaked(int(active[:, m].sum()), case["size"] + 1, generator) for m in range(len(subsets))}
    return generalist, subsets, active, outputs


def timed(function, *args, repeats: int = 1):
    """(median seconds, last result) of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*args)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def em_iterations(generalist: torch.Tensor, batch, q: torch.Tensor, limit: int = 1000) -> int:
    """How many steps `solve_em` took to reach `q`: the least max_iter that gives the same bits (bisection).

    `solve_em` does not report it; `limit` (its max_iter) means it may have stopped without reaching tol.
    """
    low, high = 1, limit
    while low < high:
        middle = (low + high) // 2
        if torch.equal(solve_em(generalist, batch, max_iter=middle), q):
            high = middle
        else:
            low = middle + 1
    return low


def compare_solvers(case: dict, active_per_input: int, repeats: int, seed: int) -> dict:
    """Part (a) for one case: wall times, speed ratio and agreement of the two solvers, and EM in float32."""
    classes = case["classes"]
    generalist, subsets, active, outputs = solver_problem(case, active_per_input, seed)
    batch = specialist_batch(classes, subsets, active, outputs)
    solve_em(generalist, batch)  # warm-up
    em_seconds, q_em = timed(solve_em, generalist, batch, repeats=repeats)
    gd_seconds, q_gd = timed(solve_gradient, generalist, batch)
    single = specialist_batch(classes, subsets, active, outputs, dtype=torch.float32)
    em32_seconds, q_em32 = timed(solve_em, generalist.float(), single, repeats=repeats)
    lumped = lumped_batch(generalist.float(), subsets, active, {m: probs.float() for m, probs in outputs.items()})
    lumped_seconds, q_lumped = timed(solve_lumped, lumped, repeats=repeats)
    objective_em = objective(q_em, generalist, batch).sum().item()
    objective_gd = objective(q_gd, generalist, batch).sum().item()
    result = {**case, "active_per_input": active_per_input,
              "em_seconds": round(em_seconds, 4), "gradient_seconds": round(gd_seconds, 2),
              "gradient_over_em": round(gd_seconds / em_seconds, 1),
              "em_iterations": em_iterations(generalist, batch, q_em),
              "max_abs_q_em_minus_gradient": (q_em - q_gd).abs().max().item(),
              "objective_em": objective_em, "objective_gradient": objective_gd,
              "objective_gradient_minus_em": objective_gd - objective_em,
              "em_float32_seconds": round(em32_seconds, 4),
              "em_float32_iterations": em_iterations(generalist.float(), single, q_em32),
              "max_abs_q_em_float32_minus_float64": (q_em32.double() - q_em).abs().max().item(),
              "lumped_float32_seconds": round(lumped_seconds, 4),
              "max_abs_q_lumped_float32_minus_em_float64": (q_lumped.double() - q_em).abs().max().item()}
    log.info("solvers %s", result)
    return result


def sharpened_mlp(outputs: int, probe: torch.Tensor) -> torch.nn.Module:
    """A 784-1200-1200-`outputs` MLP whose last layer is scaled so its logits on `probe` have std 3."""
    model = create_model("mlp", outputs, (INPUT,), hidden=HIDDEN).eval()
    with torch.inference_mode():
        scale = LOGIT_STD / model(probe).std().item()
    last = model.net[-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return model


def one_pass(x, generalist, specialists, subsets, membership, top_n: int) -> dict:
    """Seconds of each stage of one combined prediction of the batch x, and the mean number of active specialists."""
    with torch.inference_mode():
        started = time.perf_counter()
        probs = torch.softmax(generalist(x), dim=1)
        generalist_done = time.perf_counter()
        active = active_specialists(probs, membership, top_n)
        routed = time.perf_counter()
        outputs = {}
        for m, specialist in enumerate(specialists):
            rows = active[:, m].nonzero().squeeze(1)
            if len(rows):
                outputs[m] = torch.softmax(specialist(x[rows]), dim=1)
        specialists_done = time.perf_counter()
        batch = specialist_batch(membership.shape[1], subsets, active, outputs)
        assembled = time.perf_counter()
        solve_em(probs.double(), batch)
        dense_done = time.perf_counter()
        lumped = lumped_batch(probs, subsets, active, {m: out.float() for m, out in outputs.items()})
        lumped_assembled = time.perf_counter()
        solve_lumped(lumped)
        lumped_done = time.perf_counter()
    return {"generalist": generalist_done - started, "routing": routed - generalist_done,
            "specialists": specialists_done - routed, "assemble": assembled - specialists_done,
            "solve": dense_done - assembled, "dense_combiner": dense_done - specialists_done,
            "lumped_assemble": lumped_assembled - dense_done, "lumped_solve": lumped_done - lumped_assembled,
            "combiner": lumped_done - dense_done,
            "active_per_input": active.sum(1).double().mean().item()}


def forward_share(case: dict, batch: int, top_ns: list[int], repeats: int, seed: int) -> list[dict]:
    """Part (b) for one class count: stage times at each top_n and the combiner's share of the forward passes."""
    torch.manual_seed(seed)
    classes, size = case["classes"], case["size"]
    subsets = torch.randperm(classes).reshape(-1, size).sort(dim=1).values.tolist()
    membership = torch.zeros(len(subsets), classes, dtype=torch.bool)
    for m, subset in enumerate(subsets):
        membership[m, subset] = True
    x = torch.randn(batch, INPUT)
    generalist = sharpened_mlp(classes, x)
    specialists = [sharpened_mlp(size + 1, x) for _ in subsets]
    results = []
    for top_n in top_ns:
        one_pass(x, generalist, specialists, subsets, membership, top_n)  # warm-up
        passes = [one_pass(x, generalist, specialists, subsets, membership, top_n) for _ in range(repeats)]
        median = {stage: statistics.median(p[stage] for p in passes)
                  for stage in ("generalist", "routing", "specialists", "assemble", "solve", "dense_combiner",
                                "lumped_assemble", "lumped_solve", "combiner")}
        share = {name: statistics.median(p[name] / (p["generalist"] + p["specialists"]) for p in passes)
                 for name in ("dense_combiner", "combiner")}
        result = {"classes": classes, "specialists": len(subsets), "size": size, "batch": batch, "top_n": top_n,
                  "active_per_input": round(passes[0]["active_per_input"], 2),
                  **{f"{stage}_seconds": round(seconds, 4) for stage, seconds in median.items()},
                  "dense_combiner_share_of_forward": round(share["dense_combiner"], 3),
                  "combiner_share_of_forward": round(share["combiner"], 3)}
        log.info("share %s", result)
        results.append(result)
    return results


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--active", type=int, default=10, help="active specialists per input in part (a)")
    arguments.add_argument("--batch", type=int, default=1024, help="inputs per batch in part (b)")
    arguments.add_argument("--top-n", type=int, nargs="+", default=[1, 10], help="routing rules in part (b)")
    arguments.add_argument("--repeats", type=int, default=5)
    arguments.add_argument("--seed", type=int, default=0)
    args = arguments.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    solvers = [compare_solvers(case, args.active, args.repeats, args.seed) for case in SOLVER_CASES]
    shares = [row for case in SHARE_CASES for row in forward_share(case, args.batch, args.top_n, args.repeats,
                                                                     args.seed)]
    path = write_result(args.out, "combiner", {
        "goals": {"solvers": "gradient_over_em >= 50 at equal objective; lumped float32 within 1e-6 of dense float64",
                  "share": "combiner_share_of_forward <= 0.5 at C = 15,000, top_n = 10"},
        "configuration": {"solver_cases": SOLVER_CASES, "share_cases": SHARE_CASES, "input": INPUT,
                          "hidden": HIDDEN, "logit_std": LOGIT_STD, "repeats": args.repeats, "seed": args.seed},
        "solvers": solvers, "share": shares, "torch_threads": torch.get_num_threads()})
    for row in solvers:
        log.info("C=%d: gradient %.1f s / EM %.3f s = %.0fx, max |dq| %.1e, objective gap %.1e", row["classes"],
                 row["gradient_seconds"], row["em_seconds"], row["gradient_over_em"],
                 row["max_abs_q_em_minus_gradient"], row["objective_gradient_minus_em"])
    for row in shares:
        log.info("C=%d top_n=%d: combiner %.3f s = %.2f x (generalist + specialists)", row["classes"],
                 row["top_n"], row["combiner_seconds"], row["combiner_share_of_forward"])
    log.info("-> %s", path)


if __name__ == "__main__":
    main()
