import pytest
import torch
import torch.nn.functional as F

from ensembles.averaging import combine_log_probs, ensemble_logits


@pytest.fixture
def member_logits():
    return torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0)) * 3


@pytest.mark.parametrize("method", ["arithmetic", "geometric"])
def test_an_ensemble_of_one_is_its_member(member_logits, method):
    one = member_logits[:1]
    torch.testing.assert_close(combine_log_probs(one, 2.0, method), F.log_softmax(one[0] / 2.0, dim=-1))


def test_arithmetic_mean_golden_numbers():
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, 2.0 * torch.log(torch.tensor(3.0))]]])  # members: (.5,.5), (.1,.9)
    probs = combine_log_probs(logits, temperature=1.0).exp()
    torch.testing.assert_close(probs, torch.tensor([[0.3, 0.7]]))
    weighted = combine_log_probs(logits, 1.0, "arithmetic", weights=[3.0, 1.0]).exp()
    torch.testing.assert_close(weighted, torch.tensor([[0.4, 0.6]]))


def test_geometric_mean_with_equal_weights_is_the_softmax_of_mean_logits(member_logits):
    expected = F.log_softmax(member_logits.mean(0) / 4.0, dim=-1)
    torch.testing.assert_close(combine_log_probs(member_logits, 4.0, "geometric"), expected)


@pytest.mark.parametrize("method", ["arithmetic", "geometric"])
def test_ensemble_logits_give_the_combined_distribution_at_the_same_temperature(member_logits, method):
    for temperature in (1.0, 5.0):
        z = ensemble_logits(member_logits, temperature, method)
        torch.testing.assert_close(F.log_softmax(z / temperature, dim=-1),
                                   combine_log_probs(member_logits, temperature, method))
        assert torch.allclose(F.softmax(z / temperature, dim=-1).sum(-1), torch.ones(5))


@pytest.mark.parametrize("bad, message", [("median", "method must be arithmetic or geometric"),
                                          ([1.0], "3 numbers"), ([0.0, 0.0, 0.0], "not all zero"),
                                          ([1.0, -1.0, 1.0], ">= 0")])
def test_bad_averaging_settings_are_refused(member_logits, bad, message):
    kwargs = {"method": bad} if isinstance(bad, str) else {"weights": bad}
    with pytest.raises(ValueError, match=message):
        combine_log_probs(member_logits, **kwargs)
