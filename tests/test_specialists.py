import math

import pytest
import torch

from distill.config import ModelSpec, TrainConfig, load_config
from distill.data import load_synthetic
from distill.models import create_model
from distill.train import TopKSoftTargets, predict_logits, train
from specialists.covariance import CovarianceAccumulator, confusion_affinity
from specialists.specialist import (corrected_logits, dustbin_shift, output_layer, penultimate_features,
                                    specialist_data, specialist_state)
from ensembles.jobs import TrainedModel
from specialists.combiner import SpecialistEnsemble
from specialists.subsets import adjusted_rand_index, find_subsets
from specialists.training import compute_matched_job, folded_targets, matched_epochs, specialist_jobs


def _probs(rows: int, classes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 3, dim=1)


def test_streaming_covariance_equals_the_batch_formula():
    probs = _probs(500, 12)
    accumulator = CovarianceAccumulator(12)
    for chunk in probs.split(64):
        accumulator.update(chunk)
    centred = probs - probs.mean(0)
    torch.testing.assert_close(accumulator.covariance(), centred.T @ centred / len(probs))
    torch.testing.assert_close(accumulator.covariance(), torch.cov(probs.T, correction=0))


def test_top_k_covariance_is_exact_on_the_kept_entries_and_counts_what_it_drops():
    probs = _probs(300, 20)
    accumulator = CovarianceAccumulator(20, top_k=3)
    accumulator.update(probs)
    values, index = probs.topk(3, dim=1)
    truncated = torch.zeros_like(probs).scatter(1, index, values)
    mean = truncated.mean(0)
    torch.testing.assert_close(accumulator.covariance(), truncated.T @ truncated / 300 - torch.outer(mean, mean))
    assert accumulator.dropped_mass == pytest.approx((1 - values.sum(1)).mean().item())


def test_confusion_affinity_is_symmetric_row_rates():
    predicted, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 0, 1, 2, 2, 1])
    affinity = confusion_affinity(predicted, labels, 3)
    torch.testing.assert_close(affinity, affinity.T)
    assert affinity[0, 1].item() == pytest.approx((0.5 + 0.0) / 2)  # half of class 0 read as 1, no 1 read as 0
    assert affinity[1, 2].item() == pytest.approx((0.5 + 0.0) / 2)


def _block_affinity(groups: int = 4, size: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An affinity whose columns are noisy copies of their group's indicator: k-means must find the groups."""
    group_of = torch.arange(groups * size) % groups
    noise = torch.randn(groups * size, groups * size, generator=torch.Generator().manual_seed(seed)) * 0.05
    return (group_of[:, None] == group_of[None, :]).float() + noise, group_of


def test_clustering_recovers_known_groups_and_is_deterministic_under_a_seed():
    affinity, groups = _block_affinity()
    first, second = find_subsets(affinity, 4, seed=3), find_subsets(affinity, 4, seed=3)
    assert first == second
    assert adjusted_rand_index(first.clusters, groups) == pytest.approx(1.0)
    assert sorted(map(tuple, first.subsets)) == sorted(tuple(range(g, 20, 4)) for g in range(4))
    assert (first.coverage() == 1).all()


def test_overlap_and_size_limits():
    affinity, _ = _block_affinity()
    overlapping = find_subsets(affinity, 4, overlap=2, seed=0)
    assert (overlapping.coverage() == 2).all()  # every class in its two nearest clusters
    fixed = find_subsets(affinity, 4, overlap=2, min_size=7, max_size=7, seed=0)
    assert [len(subset) for subset in fixed.subsets] == [7] * 4
    for subset, centre_group in zip(fixed.subsets, [s[0] % 4 for s in find_subsets(affinity, 4, seed=0).subsets]):
        assert set(range(centre_group, 20, 4)) <= set(subset)  # a capped subset keeps its own group first
    capped = find_subsets(affinity, 4, max_size=2, seed=0)
    assert [len(subset) for subset in capped.subsets] == [2] * 4
    assert (capped.coverage() == 0).sum() == 12  # the classes cut away are covered by no specialist


@pytest.fixture(scope="module")
def grouped_data():
    return load_synthetic(None, classes=20, groups=4, dim=16, train_per_class=60, test_per_class=60, seed=1)


@pytest.fixture(scope="module")
def generalist(grouped_data):
    torch.manual_seed(0)
    model = create_model("mlp", 20, grouped_data.input_shape, hidden=[32])
    train(model, grouped_data.x_train, grouped_data.y_train, TrainConfig(epochs=5, batch_size=64, lr=0.1))
    return model.eval()


def test_specialist_starts_as_the_generalist_restricted_to_its_subset(grouped_data, generalist):
    subset = [1, 5, 9, 13]
    specialist = create_model("mlp", len(subset) + 1, grouped_data.input_shape, hidden=[32])
    features = penultimate_features(generalist, grouped_data.x_train)
    specialist.load_state_dict(specialist_state(generalist, subset, features))
    before = predict_logits(generalist, grouped_data.x_test)
    after = predict_logits(specialist, grouped_data.x_test)
    torch.testing.assert_close(torch.softmax(after[:, :-1], 1), torch.softmax(before[:, subset], 1))
    others = torch.ones(20, dtype=torch.bool)
    others[subset] = False
    generalist_rest = torch.softmax(before, 1)[:, others].sum(1)
    assert (torch.softmax(after, 1)[:, -1] - generalist_rest).abs().mean() < 0.05  # the fitted dustbin row


def test_output_layer_is_the_last_linear():
    model = create_model("cnn", 7, (1, 8, 8), channels=[4], hidden=6)
    name, layer = output_layer(model)
    assert layer.out_features == 7 and name == str(len(model) - 1)


def test_specialist_data_is_half_special_with_remapped_labels():
    labels = torch.arange(10).repeat_interleave(30)
    data = specialist_data(labels, [2, 7], seed=0)
    assert len(data.indices) == 120 and data.special_share == 0.5
    picked = labels[data.indices]
    torch.testing.assert_close(data.labels[picked == 2], torch.zeros(30, dtype=torch.long))
    torch.testing.assert_close(data.labels[picked == 7], torch.ones(30, dtype=torch.long))
    assert (data.labels[(picked != 2) & (picked != 7)] == 2).all()  # the dustbin
    assert torch.equal(specialist_data(labels, [2, 7], seed=0).indices, data.indices)


def test_dustbin_shift_golden_numbers():
    assert dustbin_shift(0.5, 0.5) == 0.0
    assert dustbin_shift(0.2, 0.5) == pytest.approx(math.log(4.0))
    assert dustbin_shift(0.1, 0.25) == pytest.approx(math.log(9.0) - math.log(3.0))


def test_dustbin_correction_restores_the_natural_share_of_non_special_examples():
    """Trained on half special examples, a specialist overstates them on natural data; after the correction its
    mean dustbin probability is the true share of non-special examples."""
    # Overlapping groups: only a specialist that is often unsure shows its training prior in its probabilities.
    noisy = load_synthetic(None, classes=20, groups=4, dim=16, train_per_class=150, test_per_class=150,
                           group_spread=1.0, noise=2.0, seed=2)
    subset = [0, 4, 8, 12]  # one group: 20 % of the natural data
    data = specialist_data(noisy.y_train, subset, seed=0)
    torch.manual_seed(0)
    specialist = create_model("mlp", len(subset) + 1, noisy.input_shape, hidden=[32])
    train(specialist, noisy.x_train[data.indices], data.labels, TrainConfig(epochs=10, batch_size=32, lr=0.05))
    logits = predict_logits(specialist, noisy.x_test)
    true_share = 1 - torch.isin(noisy.y_test, torch.tensor(subset)).float().mean().item()
    natural = torch.isin(noisy.y_train, torch.tensor(subset)).float().mean().item()
    corrected = corrected_logits(logits, dustbin_shift(natural, data.special_share))
    assert torch.softmax(logits, 1)[:, -1].mean().item() < true_share - 0.05  # measured: 0.717 against 0.8
    assert torch.softmax(corrected, 1)[:, -1].mean().item() == pytest.approx(true_share, abs=0.02)


def _trained(model: torch.nn.Module, spec_kwargs: dict) -> TrainedModel:
    return TrainedModel("generalist", model, ModelSpec("mlp", spec_kwargs), None, "sum", 0, 20, (16,), "fp32")


def test_folded_targets_are_the_generalists_distribution_over_subset_and_dustbin(grouped_data, generalist):
    subset, temperature = [1, 5, 9, 13], 3.0
    targets = folded_targets(_trained(generalist, {"hidden": [32]}), grouped_data.x_test, subset, temperature)
    folded = torch.softmax(targets.logits / temperature, dim=1)  # what the training loop makes of them at T
    probs = torch.softmax(predict_logits(generalist, grouped_data.x_test) / temperature, dim=1)
    torch.testing.assert_close(folded[:, :-1], probs[:, subset])
    torch.testing.assert_close(folded[:, -1], 1 - probs[:, subset].sum(1))


def test_specialist_jobs_carry_soft_targets_and_the_example_epochs_of_the_control(grouped_data, generalist):
    config = load_config(overrides=["specialists.count=2", "specialists.loss={temperature: 2.0, w_soft: 0.5, "
                                    "w_hard: 0.5}", "specialists.train.epochs=3"])
    subsets = [[0, 4, 8, 12, 16], [1, 5, 9, 13, 17]]
    planned = specialist_jobs(config, subsets, _trained(generalist, {"hidden": [32]}), grouped_data,
                              lambda name: 7, lambda more: "inputs")
    for job, data in planned.jobs:
        assert job.weights == config.specialists.loss and data.targets.logits.shape == (len(data.labels), 6)
    assert planned.example_epochs == 3 * sum(len(data.labels) for _, data in planned.jobs) == 3 * 2 * 600
    hard = specialist_jobs(load_config(overrides=["specialists.count=2"]), subsets,
                           _trained(generalist, {"hidden": [32]}), grouped_data, lambda name: 7, lambda more: "x")
    assert all(data.targets is None for _, data in hard.jobs)  # the paper's hard-label specialists by default
    job, data = compute_matched_job(config, _trained(generalist, {"hidden": [32]}), grouped_data,
                                    planned.example_epochs, 3, "inputs")
    assert job.train.epochs == matched_epochs(3600, 1200) == 3 and len(data.labels) == 1200
    assert all(torch.equal(value, generalist.state_dict()[key]) for key, value in job.initial_state.items())
    assert matched_epochs(100, 1200) == 1  # never less than one epoch


def test_top_k_combination_is_taken_chunk_by_chunk_and_packs_for_the_cache(grouped_data, generalist):
    subsets = [[0, 4, 8, 12, 16], [1, 5, 9, 13, 17]]
    specialists, features = [], penultimate_features(generalist, grouped_data.x_train)
    for subset in subsets:
        specialist = create_model("mlp", len(subset) + 1, grouped_data.input_shape, hidden=[32])
        specialist.load_state_dict(specialist_state(generalist, subset, features))
        specialists.append(specialist.eval())
    combiner = SpecialistEnsemble(generalist, specialists, subsets, [0.5, 0.5])
    inputs = torch.cat([grouped_data.x_train, grouped_data.x_test])  # 2,400 rows: three chunks of 1,024
    whole = combiner.log_probs(inputs, temperature=2.0)
    probs, classes = combiner.top_probs(inputs, temperature=2.0, k=5)
    expected = whole.exp().topk(5, dim=1)
    torch.testing.assert_close(probs, expected.values)
    assert torch.equal(classes, expected.indices)
    targets = TopKSoftTargets(probs, classes, 20)
    again = TopKSoftTargets.unpacked(targets.packed(), 20)
    assert torch.equal(again.probs, probs) and torch.equal(again.classes, classes)


def test_the_generalist_alone_is_the_combination_without_specialists(grouped_data, generalist):
    subsets = [[0, 4, 8, 12, 16]]
    specialist = create_model("mlp", len(subsets[0]) + 1, grouped_data.input_shape, hidden=[32])
    specialist.load_state_dict(specialist_state(generalist, subsets[0],
                                                penultimate_features(generalist, grouped_data.x_train)))
    combiner = SpecialistEnsemble(generalist, [specialist.eval()], subsets, [0.5], precisions=["fp32", "bf16"])
    alone = combiner.generalist_alone()
    assert (alone.specialists, alone.subsets, alone.precisions) == ([], [], ["fp32"])
    assert alone.identity({"generalist": "c"}, 2.0) != combiner.identity({"generalist": "c"}, 2.0)
    inputs = torch.cat([grouped_data.x_train, grouped_data.x_test])
    with torch.no_grad():
        expected = torch.log_softmax(generalist(inputs).double() / 2.0, dim=1).float()
    torch.testing.assert_close(alone.log_probs(inputs, temperature=2.0), expected)
    assert not torch.allclose(combiner.log_probs(inputs, temperature=2.0), expected, atol=1e-3)
    probs, classes = alone.top_probs(inputs, temperature=2.0, k=3)
    torch.testing.assert_close(probs, expected.exp().topk(3, dim=1).values)
