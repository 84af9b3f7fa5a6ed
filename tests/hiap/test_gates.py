import itertools
import math

import pytest
import torch

from hiap.gates import TemperatureSchedule, export_rule, gumbel_sigmoid, keep_probability, logistic_noise


def test_logistic_noise_moments() -> None:
    eps = logistic_noise((200_000,), torch.Generator().manual_seed(1))
    assert abs(float(eps.mean())) < 0.02
    assert float(eps.var()) == pytest.approx(math.pi**2 / 3, rel=0.02)


@pytest.mark.parametrize("logit", [-2.0, -0.5, 0.0, 1.0, 3.0])
def test_hard_sample_keep_rate_is_sigmoid_of_logit_for_any_tau(logit: float) -> None:
    a = torch.full((100_000,), logit)
    for tau in (2.0, 0.5):
        z = gumbel_sigmoid(a, tau, logistic_noise(tuple(a.shape), torch.Generator().manual_seed(2)), hard=True)
        assert set(torch.unique(z).tolist()) <= {0.0, 1.0}
        assert float(z.mean()) == pytest.approx(float(keep_probability(torch.tensor(logit))), abs=0.01)


def test_straight_through_gradient_equals_soft_gradient() -> None:
    noise = logistic_noise((64,), torch.Generator().manual_seed(3))
    a_hard = torch.linspace(-3, 3, 64, requires_grad=True)
    a_soft = torch.linspace(-3, 3, 64, requires_grad=True)
    w = torch.randn(64)
    (gumbel_sigmoid(a_hard, 0.7, noise, hard=True) * w).sum().backward()
    (gumbel_sigmoid(a_soft, 0.7, noise, hard=False) * w).sum().backward()
    assert torch.allclose(a_hard.grad, a_soft.grad)
    soft = torch.sigmoid((a_soft.detach() + noise) / 0.7)
    assert torch.allclose(a_soft.grad, w * soft * (1 - soft) / 0.7, atol=1e-6)


def test_soft_samples_become_bimodal_as_tau_falls() -> None:
    a = torch.zeros(50_000)
    noise = logistic_noise(tuple(a.shape), torch.Generator().manual_seed(4))

    def middle_share(tau: float) -> float:
        z = gumbel_sigmoid(a, tau, noise, hard=False)
        return float(((z > 0.1) & (z < 0.9)).float().mean())

    # At a = 0, 0.1 < z < 0.9 iff |eps| < tau * ln 9, whose probability is 2 * sigmoid(tau * ln 9) - 1.
    for tau in (2.0, 1.0, 0.5, 0.05):
        assert middle_share(tau) == pytest.approx(2 / (1 + math.exp(-tau * math.log(9))) - 1, abs=0.01)
    assert middle_share(0.05) < middle_share(0.5) < middle_share(2.0)


def test_export_rule_is_strictly_positive_logit() -> None:
    assert export_rule(torch.tensor([-1.0, 0.0, 1e-6, 2.0])).tolist() == [False, False, True, True]


def test_temperature_schedule_is_exponential_per_step() -> None:
    s = TemperatureSchedule(2.0, 0.5, 100)
    assert s(0) == pytest.approx(2.0)
    assert s(100) == pytest.approx(0.5)
    assert s(50) == pytest.approx(1.0)  # geometric mean of 2 and 0.5
    assert s(25) == pytest.approx(2.0 * 0.25**0.25)
    assert s(1000) == pytest.approx(0.5)  # clamped after the run
    taus = [s(t) for t in range(101)]
    assert all(b < a for a, b in itertools.pairwise(taus))
