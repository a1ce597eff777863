"""A generalist and its trained specialists as one model: eq. 5 on every input, specialists run only where active."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from distill.config import Eq5Solver
from distill.precision import ComputePrecision
from distill.records import check_choice
from distill.storage import fingerprint
from distill.streamed import Inputs, in_memory
from distill.train import predict_logits
from specialists.eq5 import active_specialists, lumped_batch, solve_gradient, solve_lumped, specialist_batch
from specialists.specialist import corrected_logits, output_layer


@dataclass
class SpecialistEnsemble:
    """The frozen generalist, the frozen specialists, their subsets and dustbin-logit corrections, and the
    precision each runs in (the one it trained in: the generalist's first)."""

    generalist: nn.Module
    specialists: list[nn.Module]
    subsets: list[list[int]]
    dustbin_shifts: list[float]
    top_n: int = 1
    solver: Eq5Solver = "em"
    precisions: list[ComputePrecision] | None = None  # None: every model in fp32

    def __post_init__(self):
        check_choice(self.solver, Eq5Solver, "solver")
        self.precisions = self.precisions or ["fp32"] * (1 + len(self.specialists))
        self.num_classes = output_layer(self.generalist)[1].out_features
        self.membership = torch.zeros(len(self.subsets), self.num_classes, dtype=torch.bool)
        for m, subset in enumerate(self.subsets):
            self.membership[m, subset] = True

    def generalist_alone(self) -> SpecialistEnsemble:
        """The same combination without specialists: q is the generalist's distribution (the student control's
        teacher, computed and stored as the combination is)."""
        return replace(self, specialists=[], subsets=[], dustbin_shifts=[],
                                   precisions=self.precisions[:1])

    def identity(self, checksums: dict[str, str], temperature: float) -> str:
        """A checksum-like key of this combination at `temperature` (the soft-target cache's key), given the
        checkpoint checksums of the generalist and the specialists."""
        return fingerprint({"checksums": checksums, "subsets": self.subsets, "shifts": self.dustbin_shifts,
                            "top_n": self.top_n, "solver": self.solver, "temperature": temperature,
                            "precisions": self.precisions})

    def log_probs(self, inputs: Inputs, temperature: float = 1.0,
                  generalist_logits: torch.Tensor | None = None) -> torch.Tensor:
        """log q (N, C): the eq. 5 combination of everyone's distributions at `temperature`, in chunks of rows.

        Each specialist's logits get their dustbin correction, then all logits are divided by T. Activity is
        decided at T = 1 (the generalist's top-n classes do not depend on T).
        """
        return torch.cat(list(self._log_prob_chunks(inputs, temperature, generalist_logits)))

    def top_probs(self, inputs: Inputs, temperature: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's k largest probabilities of q at `temperature` and their classes, (N, k) each, chunk by chunk:
        for label sets whose (N, C) combination would not fit in memory (15,000 classes on 300,000 rows: 18 GB)."""
        tops = [log_q.topk(min(k, log_q.shape[1]), dim=1) for log_q in self._log_prob_chunks(inputs, temperature)]
        return torch.cat([top.values for top in tops]).exp(), torch.cat([top.indices for top in tops])

    def _log_prob_chunks(self, inputs: Inputs, temperature: float,
                         generalist_logits: torch.Tensor | None = None, chunk: int = 1024):
        """log q of each chunk of rows in turn; the generalist's logits too are computed chunk by chunk."""
        for start in range(0, len(inputs), chunk):
            rows = in_memory(inputs[start:start + chunk])  # read by every model in turn: decoded once
            logits = (predict_logits(self.generalist, rows, precision=self.precisions[0]) if generalist_logits is None
                      else generalist_logits[start:start + chunk])
            yield self._chunk_log_probs(rows, logits, temperature)

    def _chunk_log_probs(self, inputs: torch.Tensor, generalist_logits: torch.Tensor,
                         temperature: float) -> torch.Tensor:
        """eq. 5 on a chunk: "em" solves each row on its active subsets' classes plus one lumped class in float32
        (within 1e-6 of the dense float64 optimum, tests/test_eq5.py); "gradient" is the paper's dense descent."""
        dtype = torch.float32 if self.solver == "em" else torch.float64
        generalist_probs = torch.softmax(generalist_logits.double() / temperature, dim=1).to(dtype)
        active = active_specialists(generalist_logits, self.membership.to(inputs.device), self.top_n)
        if not active.any():  # eq. 5 without a specialist term is solved by the generalist's own distribution
            return generalist_probs.clamp_min(torch.finfo(dtype).tiny).log().float()
        outputs = {}
        for m, (specialist, shift, precision) in enumerate(zip(self.specialists, self.dustbin_shifts,
                                                               self.precisions[1:])):
            rows = active[:, m].nonzero().squeeze(1)
            if len(rows):
                logits = corrected_logits(predict_logits(specialist, inputs[rows], precision=precision), shift)
                outputs[m] = torch.softmax(logits.double() / temperature, dim=1).to(dtype)
        if self.solver == "em":
            q = solve_lumped(lumped_batch(generalist_probs, self.subsets, active, outputs))
        else:
            batch = specialist_batch(generalist_probs.shape[1], self.subsets, active, outputs, device=inputs.device)
            q = solve_gradient(generalist_probs, batch)
        return q.clamp_min(torch.finfo(dtype).tiny).log().float()
