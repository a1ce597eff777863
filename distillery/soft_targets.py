"""What the teachers give the student on the transfer set: soft targets, computed once and cached.

One teacher or an ensemble: each model's logits, cached by its checkpoint's checksum and the precision it runs in
(`distill.logit_cache`) and computed in parallel shards on Ray when missing; an ensemble averages them at the
student's temperature. A generalist with specialists: their eq. 5 combination at that temperature, cached by the
checksums and precisions of every model, whole or as each row's top-k probabilities. Every model predicts in the
precision it trained in; softmax and averaging are fp32. When the student's inputs are augmented, there is nothing
to cache: the teacher runs on each augmented batch.
"""

from __future__ import annotations

import torch

from distill.logit_cache import cached_logits
from distill.storage import cache_home
from distill.streamed import Inputs
from distill.train import SoftTargets, TopKSoftTargets
from distillery.context import RunContext
from distillery.teachers import Teachers
from ensembles.averaging import Ensemble, ensemble_logits
from ensembles.fanout import predict_all
from specialists.combiner import SpecialistEnsemble


def soft_targets(context: RunContext, teachers: Teachers, inputs: Inputs
                 ) -> SoftTargets | TopKSoftTargets | None:
    """The student's soft targets on `inputs` (the transfer set), or None when it learns from labels only."""
    config = context.config
    loss = config.student.loss
    if not loss.w_soft:
        return None
    if teachers.specialists:
        return _combined_soft_targets(context, teachers.specialists.combiner, teachers.checksums, inputs)
    members = teachers.members
    if config.student.train.augments:
        if not teachers.is_ensemble:
            return SoftTargets(teacher=members[0].model, teacher_precision=members[0].precision)
        return SoftTargets(teacher=Ensemble([m.model for m in members], loss.temperature, config.ensemble.combine,
                                            config.ensemble.weights, [m.precision for m in members]))
    compute = lambda names: predict_all({m.name: m.path for m in members if m.name in names}, inputs,  # noqa: E731
                                        context.cluster)
    keys = {m.name: f"{m.checksum}:{m.precision}" for m in members}
    logits = cached_logits(keys, inputs, cache_home() / "soft_targets", compute)
    if not teachers.is_ensemble:
        return SoftTargets(logits=logits[members[0].name])
    stacked = torch.stack([logits[m.name] for m in members])
    return SoftTargets(logits=ensemble_logits(stacked, loss.temperature, config.ensemble.combine,
                                              config.ensemble.weights))


def generalist_soft_targets(context: RunContext, teachers: Teachers, inputs: Inputs
                            ) -> SoftTargets | TopKSoftTargets:
    """The student control's soft targets: the generalist's alone, computed and stored as the combination's are
    (whole or top-k), so the two students differ only in what the specialists add; None when the student learns
    from labels only."""
    if not context.config.student.loss.w_soft:
        return None
    generalist = teachers.members[0]
    return _combined_soft_targets(context, teachers.specialists.combiner.generalist_alone(),
                                  {generalist.name: generalist.checksum}, inputs)


def _combined_soft_targets(context: RunContext, combiner: SpecialistEnsemble, checksums: dict[str, str],
                           inputs: Inputs) -> SoftTargets | TopKSoftTargets:
    """The combination as logits T log q, or with `targets_top_k` only each row's k largest probabilities, taken
    chunk by chunk so the whole (N, C) combination never exists (cached packed, `TopKSoftTargets.packed`)."""
    temperature = context.config.student.loss.temperature
    key, top_k = combiner.identity(checksums, temperature), context.config.specialists.targets_top_k
    if top_k:
        def compute(names: list[str]) -> dict[str, torch.Tensor]:
            probs, classes = combiner.top_probs(inputs, temperature, top_k)
            return {"combined": TopKSoftTargets(probs, classes, combiner.num_classes).packed()}

        packed = cached_logits({"combined": f"{key}:top{top_k}"}, inputs, cache_home() / "soft_targets", compute)
        return TopKSoftTargets.unpacked(packed["combined"], combiner.num_classes)
    compute = lambda names: {"combined": temperature * combiner.log_probs(inputs, temperature)}  # noqa: E731
    logits = cached_logits({"combined": key}, inputs, cache_home() / "soft_targets", compute)["combined"]
    return SoftTargets(logits=logits)
