"""The training objective against hand-computed values: CE with label smoothing, KD, MAC penalty, floors."""

from __future__ import annotations

import math

import pytest
import torch

from hiap.cost import ExpectedCost
from hiap.gated import Floors, GatedViT
from hiap.loss import allocation_loss, feasibility_loss, mac_penalty, task_loss
from hiap.models import create_model

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
TARGETS = torch.tensor([0, 2])
TEACHER = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 4.0, 0.0]])


def _log_softmax(rows: list[list[float]], t: float = 1.0) -> list[list[float]]:
    out = []
    for row in rows:
        z = math.log(sum(math.exp(v / t) for v in row))
        out.append([v / t - z for v in row])
    return out


def _ce(eps: float) -> float:
    """Label smoothing (Szegedy et al.): the target is 1 - eps on the label plus eps / C on every class."""
    logp, c = _log_softmax(LOGITS.tolist()), LOGITS.shape[1]
    rows = zip(logp, TARGETS.tolist(), strict=True)
    return sum(-(1 - eps) * row[y] - eps / c * sum(row) for row, y in rows) / len(logp)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_with_label_smoothing_equals_the_hand_value(eps: float) -> None:
    loss, parts = task_loss(LOGITS, TARGETS, label_smoothing=eps)
    assert loss.item() == pytest.approx(_ce(eps), abs=1e-6)
    assert list(parts) == ["ce"] and parts["ce"].item() == pytest.approx(_ce(eps), abs=1e-6)
    assert not parts["ce"].requires_grad


@pytest.mark.parametrize("alpha, t", [(0.7, 4.0), (0.3, 2.0)])
def test_distillation_is_one_minus_alpha_ce_plus_alpha_t_squared_kl(alpha: float, t: float) -> None:
    student = LOGITS.clone().requires_grad_(True)
    loss, parts = task_loss(student, TARGETS, 0.1, teacher_logits=TEACHER, alpha=alpha, temperature=t)
    ls, lt = _log_softmax(LOGITS.tolist(), t), _log_softmax(TEACHER.tolist(), t)
    # KL(teacher || student) at temperature t, summed over classes, averaged over the batch (Hinton et al.)
    kl = sum(math.exp(q) * (q - p) for rs, rt in zip(ls, lt, strict=True) for p, q in zip(rs, rt, strict=True))
    kl /= len(ls)
    assert parts["kd"].item() == pytest.approx(kl, abs=1e-6) and parts["ce"].item() == pytest.approx(_ce(0.1), abs=1e-6)
    assert loss.item() == pytest.approx((1 - alpha) * _ce(0.1) + alpha * t * t * kl, abs=1e-6)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0  # the student learns; the teacher is data


def test_distillation_from_an_identical_teacher_leaves_only_the_weighted_ce() -> None:
    loss, parts = task_loss(LOGITS, TARGETS, teacher_logits=LOGITS.clone(), alpha=0.7, temperature=4.0)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-7)
    assert loss.item() == pytest.approx(0.3 * _ce(0.0), abs=1e-6)


def test_half_precision_logits_are_scored_in_float32() -> None:
    loss, _ = task_loss(LOGITS.bfloat16(), TARGETS, teacher_logits=TEACHER.bfloat16())
    assert loss.dtype == torch.float32


def test_mac_penalty_is_the_scaled_weighted_fraction_of_dense() -> None:
    macro = torch.tensor(200.0, requires_grad=True)
    micro = torch.tensor(300.0, requires_grad=True)
    cost = ExpectedCost(macro=macro, micro=micro, total=macro + micro + 500)
    loss, parts = mac_penalty(cost, 1000, lambda_macro=2.0, lambda_micro=0.5, scale=3.0)
    assert loss.item() == pytest.approx(3.0 * (2.0 * 0.2 + 0.5 * 0.3))
    assert parts["macro"].item() == pytest.approx(0.2) and parts["micro"].item() == pytest.approx(0.3)
    loss.backward()
    assert macro.grad.item() == pytest.approx(3.0 * 2.0 / 1000) and micro.grad.item() == pytest.approx(3.0 * 0.5 / 1000)
    # The controller's scale multiplies the whole penalty, and a negative scale (below the reference) inverts it.
    for scale in (0.0, 6.0, -1.5):
        assert mac_penalty(cost, 1000, 2.0, 0.5, scale)[0].item() == pytest.approx(scale * 0.55)


@pytest.fixture(scope="module")
def gated() -> GatedViT:
    return GatedViT(create_model("hiap_vit_fmnist_tiny", meta=True), floors=Floors(2, 0.25, 0.1))


def test_feasibility_loss_is_zero_above_every_floor(gated: GatedViT) -> None:
    with torch.no_grad():
        for logits in gated.gates.parameters():
            logits.fill_(3.0)
    assert feasibility_loss(gated).item() == 0.0


def test_feasibility_loss_below_the_floors_equals_the_hand_value_and_pushes_gates_open(gated: GatedViT) -> None:
    g = gated.geometry  # 4 blocks of 4 heads x 16 dims, FFN 256
    sig = torch.sigmoid
    with torch.no_grad():
        for logits in gated.gates.parameters():
            logits.fill_(3.0)
        gated.gates.head[0] = torch.tensor([-10.0, -10.0, -10.0, 0.0])  # block 0: ~0.5 heads of the 2 required
        gated.gates.value[1, 2] = -10.0  # block 1, head 2: no value dim of the 25 % required
        gated.gates.neuron[2] = -10.0  # block 2: no neuron of the 26 / 256 required
    loss = feasibility_loss(gated)
    heads = (2 - (3 * sig(torch.tensor(-10.0)) + 0.5)) ** 2
    values = sig(torch.tensor(3.0)) * (0.25 - sig(torch.tensor(-10.0))) ** 2  # weighted by its head's keep prob.
    neurons = sig(torch.tensor(3.0)) * (26 / 256 - sig(torch.tensor(-10.0))) ** 2
    assert (g.num_heads, g.head_dim, g.hidden) == (4, 16, 256)
    assert loss.item() == pytest.approx((heads + values + neurons).item(), rel=1e-5)
    loss.backward()
    grad = gated.gates.head.grad
    assert (grad[0] < 0).all() and (grad[2:] == 0).all()  # descent opens the heads of block 0, leaves the rest
    # ... and the value floor of block 1 head 2, weighted by that head's keep probability, pulls it towards closing
    assert grad[1, 2] > 0 and (grad[1, [0, 1, 3]] == 0).all()
    gated.gates.head.grad = None
    # An FFN on its way out is not held back by its neuron floor: with its macro gate closed the term vanishes.
    with torch.no_grad():
        gated.gates.ffn[2] = -30.0
    assert feasibility_loss(gated).item() == pytest.approx((heads + values).item(), rel=1e-5)


def test_allocation_loss_is_the_spread_of_block_kept_fractions_and_evens_them_out(gated: GatedViT) -> None:
    g = gated.geometry  # 4 blocks of 4 heads x 16 dims, FFN 256
    with torch.no_grad():
        for logits in gated.gates.parameters():
            logits.fill_(3.0)
    assert allocation_loss(gated).item() == pytest.approx(0.0, abs=1e-12)  # every block alike
    with torch.no_grad():
        gated.gates.neuron[0] = -30.0  # block 0 keeps its attention only
    sig3 = torch.sigmoid(torch.tensor(3.0)).item()
    attn = g.num_heads * (g.head_unit_macs + g.head_dim * g.value_unit_macs)
    full = attn + g.hidden * g.neuron_unit_macs
    kept = [sig3 * g.num_heads * g.head_unit_macs + sig3 * sig3 * g.num_heads * g.head_dim * g.value_unit_macs]
    kept = [kept[0], *[kept[0] + sig3 * sig3 * g.hidden * g.neuron_unit_macs] * 3]
    f = [k / full for k in kept]
    mean = sum(f) / 4
    loss = allocation_loss(gated)
    assert loss.item() == pytest.approx(sum((v - mean) ** 2 for v in f), rel=1e-5)
    loss.backward()
    # descent moves MACs towards block 0: its head logits open, the other blocks' neuron logits close
    assert (gated.gates.head.grad[0] < 0).all() and (gated.gates.neuron.grad[1:] > 0).all()
