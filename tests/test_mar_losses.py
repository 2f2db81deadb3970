"""MAR losses (reidctl.methods.mar.losses) against hand computations on 2-/3-D toy vectors and
against naive loop re-implementations (ALGORITHMS.md §6.3, official KovenYu/MAR src/utils.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidctl.methods.mar import losses as mar

pytestmark = pytest.mark.usefixtures("one_thread")

SQ2 = math.sqrt(2.0)


def _t(x, dtype=torch.float64, grad=False):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------------------------
# agents, L_AL


def test_normalized_agents_rows_unit_like_f_normalize():
    w = _t([[3.0, 4.0], [0.0, -2.0]])
    a = mar.normalized_agents(w)
    # (3,4)/5 = (0.6, 0.8); (0,-2)/2 = (0, -1); renorm divides by ‖w‖ + 1e-7
    assert torch.allclose(a, _t([[0.6, 0.8], [0.0, -1.0]]), atol=1e-7)
    w32 = torch.randn(5, 7)
    assert torch.allclose(mar.normalized_agents(w32), F.normalize(w32, dim=1), atol=1e-6)


def test_agent_learning_loss_by_hand_and_gradient_reaches_weight():
    z = _t([[0.6, 0.8]])
    w = _t([[2.0, 0.0], [0.0, 5.0]], grad=True)  # agents (1,0), (0,1)
    # scale 1: logits (0.6, 0.8), label 0: CE = log(e^.6 + e^.8) − .6 = log(1 + e^.2)
    loss = mar.agent_learning_loss(z, w, torch.tensor([0]), scale=1.0)
    # (renorm divides by ‖w‖ + 1e-7, hence the 1e-7 tolerances)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(0.2)), abs=1e-7)
    loss.backward()
    # p = softmax(.6, .8): p1 = e^.2/(1+e^.2). dL/dâ0 = (p0−1)·z = −p1·z, dL/dâ1 = p1·z.
    # Through w/‖w‖ the gradient is projected orthogonally to â and divided by ‖w‖:
    # W.grad[0] = (0, −p1·0.8)/2, W.grad[1] = (p1·0.6, 0)/5
    p1 = math.exp(0.2) / (1 + math.exp(0.2))
    assert torch.allclose(w.grad, _t([[0.0, -p1 * 0.8 / 2], [p1 * 0.6 / 5, 0.0]]), atol=1e-7)
    # default scale 30: logits (18, 24), label 1: CE = log(1 + e^−6)
    loss30 = mar.agent_learning_loss(z, w.detach(), torch.tensor([1]))
    assert loss30.item() == pytest.approx(math.log(1 + math.exp(-6.0)), abs=1e-7)


# --------------------------------------------------------------------------------------------
# L_RJ

# agents a0=(1,0), a1=(0,1), a2=(0.6,0.8), a3=(−0.8,0.6)
AGENTS = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-0.8, 0.6]]


def test_rejection_loss_by_hand_and_agents_detached():
    agents = _t(AGENTS, grad=True)
    # source s1 = (1,0), label 0: ‖z−a0‖² = 0; other cos: a1 0, a2 0.6 > .5, a3 −0.8
    #   → hard {a2}: ‖z−a2‖² = .16+.64 = .8, hinge 1−.8 = .2
    # source s2 = (−1,0), label 3: ‖z−a3‖² = .04+.36 = .4; other cos −1, 0, −.6 → no hard term
    zs = _t([[1.0, 0.0], [-1.0, 0.0]], grad=True)
    labels = torch.tensor([0, 3])
    # target t1 = (0,−1): cos 0, −1, −.8, −.6 → no term
    # target t2 = (.8,.6): cos .8, .6, .96, −.28 → hard a0, a1, a2, d² = 2−2cos = .4, .8, .08
    #   → hinges .6, .2, .92, mean 1.72/3
    zt = _t([[0.0, -1.0], [0.8, 0.6]], grad=True)
    loss = mar.rejection_loss(zs, labels, zt, agents)
    # terms 0, .2, .4, 1.72/3 → mean (0.6 + 1.72/3)/4
    assert loss.item() == pytest.approx((0.6 + 1.72 / 3) / 4, abs=1e-12)
    loss.backward()
    assert agents.grad is None
    assert zs.grad is not None and zt.grad is not None
    # t1 contributes nothing: its gradient is exactly 0
    assert torch.equal(zt.grad[0], torch.zeros(2, dtype=torch.float64))


def test_rejection_loss_margin_changes_selection():
    agents = _t(AGENTS)
    # margin 1.5 → sim_margin 0.25, hinge 1.5 − d². t2 = (.8,.6): cos .8, .6, .96 > .25,
    # d² .4, .8, .08 → hinges 1.1, .7, 1.42 → mean 3.22/3
    zt = _t([[0.8, 0.6]])
    loss = mar.rejection_loss(_t([]).reshape(0, 2), torch.zeros(0, dtype=torch.long), zt, agents, margin=1.5)
    assert loss.item() == pytest.approx(3.22 / 3, abs=1e-12)


def test_rejection_loss_target_only_and_empty_cases():
    agents = _t(AGENTS)
    no_source = torch.zeros(0, 2, dtype=torch.float64)
    no_labels = torch.zeros(0, dtype=torch.long)
    # target only: t1 gives no term, t2 gives 1.72/3 (see above)
    zt = _t([[0.0, -1.0], [0.8, 0.6]])
    assert mar.rejection_loss(no_source, no_labels, zt, agents).item() == pytest.approx(1.72 / 3, abs=1e-12)
    # target only, no hard agent anywhere: no term at all → 0, still backward-able
    zt1 = _t([[0.0, -1.0]], grad=True)
    loss = mar.rejection_loss(no_source, no_labels, zt1, agents)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(zt1.grad, torch.zeros(1, 2, dtype=torch.float64))
    # both sides empty
    assert mar.rejection_loss(no_source, no_labels, no_source, agents).item() == 0.0
    # source only (s1 of the hand case): terms 0 and .2 → .1
    zs = _t([[1.0, 0.0]])
    assert mar.rejection_loss(zs, torch.tensor([0]), no_source, agents).item() == pytest.approx(0.1, abs=1e-12)


def test_rejection_loss_against_loop():
    g = torch.Generator().manual_seed(0)
    agents = F.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    zs = F.normalize(torch.randn(7, 3, generator=g, dtype=torch.float64), dim=1)
    zt = F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 6, (7,), generator=g)
    terms = []
    for f, lab in zip(zs.tolist(), labels.tolist()):
        a = agents.tolist()
        terms.append(sum((f[d] - a[lab][d]) ** 2 for d in range(3)))
        hard = [j for j in range(6) if j != lab and sum(f[d] * a[j][d] for d in range(3)) > 0.5]
        if hard:
            terms.append(sum(max(0.0, 1 - sum((f[d] - a[j][d]) ** 2 for d in range(3))) for j in hard) / len(hard))
    for f in zt.tolist():
        a = agents.tolist()
        hard = [j for j in range(6) if sum(f[d] * a[j][d] for d in range(3)) > 0.5]
        if hard:
            terms.append(sum(max(0.0, 1 - sum((f[d] - a[j][d]) ** 2 for d in range(3))) for j in hard) / len(hard))
    assert len(terms) > 7  # some negative terms were collected
    assert mar.rejection_loss(zs, labels, zt, agents).item() == pytest.approx(sum(terms) / len(terms), abs=1e-12)


# --------------------------------------------------------------------------------------------
# soft multilabels


def test_soft_multilabels_by_hand_and_agents_detached():
    z = _t([[1.0, 0.0], [0.0, 1.0]], grad=True)
    agents = _t([[1.0, 0.0], [0.0, 1.0]], grad=True)
    s = math.log(3.0)
    ml = mar.soft_multilabels(z, agents, scale=s)
    # logits (ln3, 0) → (3/4, 1/4); (0, ln3) → (1/4, 3/4)
    assert torch.allclose(ml, _t([[0.75, 0.25], [0.25, 0.75]]), atol=1e-12)
    ml[:, 0].sum().backward()
    assert agents.grad is None and z.grad is not None
    # default scale 30: logits (30, 0) → (1/(1+e^−30), e^−30/(1+e^−30))
    ml30 = mar.soft_multilabels(z.detach()[:1], agents)
    assert ml30[0, 1].item() == pytest.approx(math.exp(-30) / (1 + math.exp(-30)), rel=1e-9)


# --------------------------------------------------------------------------------------------
# L_CML


def _cml_batch():
    # camera 5: (1,2), (3,6) → mean (2,4), unbiased std (√((1+1)/1), √((4+4)/1)) = (√2, √8)
    # camera 1: one image → skipped
    # camera 3: (0,0), (0,3), (0,6) → mean (0,3), std (0, √((9+0+9)/2)) = (0, 3)
    log_ml = _t([[1.0, 2.0], [0.0, 0.0], [9.0, 9.0], [0.0, 3.0], [3.0, 6.0], [0.0, 6.0]])
    cams = torch.tensor([5, 3, 1, 3, 5, 3])
    return log_ml, cams


def test_camera_moments_skip_single_image_camera_in_camera_order():
    means, stds = mar.camera_moments(*_cml_batch())
    assert torch.allclose(means, _t([[0.0, 3.0], [2.0, 4.0]]))  # cameras 3 then 5
    assert torch.allclose(stds, _t([[0.0, 3.0], [SQ2, math.sqrt(8.0)]]))
    m0, s0 = mar.camera_moments(_t([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1]))
    assert m0.shape == (0, 2) and s0.shape == (0, 2)


def test_initial_centres_average_over_cameras():
    mu, sigma = mar.initial_centres(*_cml_batch())
    # ((0,3) + (2,4))/2 = (1, 3.5); ((0,3) + (√2,√8))/2
    assert torch.allclose(mu, _t([1.0, 3.5]))
    assert torch.allclose(sigma, _t([SQ2 / 2, (3 + math.sqrt(8.0)) / 2]))
    with pytest.raises(ValueError, match="no camera has at least 2 images"):
        mar.initial_centres(_t([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1]))


def test_update_centres_by_hand_detached_and_unchanged_without_cameras():
    means, stds = mar.camera_moments(*_cml_batch())
    means.requires_grad_(True)
    mu, sigma = mar.update_centres(_t([0.0, 0.0]), _t([1.0, 1.0]), means, stds, eta=0.1)
    # μ̄ = .9·0 + .1·(1, 3.5); σ̄ = .9·1 + .1·(√2/2, (3+√8)/2)
    assert torch.allclose(mu, _t([0.1, 0.35]))
    assert torch.allclose(sigma, _t([0.9 + 0.1 * SQ2 / 2, 0.9 + 0.1 * (3 + math.sqrt(8.0)) / 2]))
    assert not mu.requires_grad and not sigma.requires_grad
    empty = torch.zeros(0, 2, dtype=torch.float64)
    mu2, sigma2 = mar.update_centres(_t([0.5, 0.5]), _t([2.0, 2.0]), empty, empty, eta=0.1)
    assert torch.equal(mu2, _t([0.5, 0.5])) and torch.equal(sigma2, _t([2.0, 2.0]))


def test_cml_loss_uses_centres_updated_before_the_loss():
    # camera 0: (0), (2) → μ 1, σ √2; camera 1: (1), (3), (5) → μ 3, σ 2
    log_ml = _t([[0.0], [1.0], [2.0], [3.0], [5.0]], grad=True)
    cams = torch.tensor([0, 1, 0, 1, 1])
    means, stds = mar.camera_moments(log_ml, cams)
    mu0, sigma0 = _t([0.0]), _t([0.0])
    # update first (η = .5): μ̄ = .5·(1+3)/2 = 1, σ̄ = .5·(√2+2)/2 = (√2+2)/4
    mu, sigma = mar.update_centres(mu0, sigma0, means, stds, eta=0.5)
    s = (SQ2 + 2) / 4
    assert mu.item() == pytest.approx(1.0) and sigma.item() == pytest.approx(s)
    loss = mar.cml_loss(means, stds, mu, sigma)
    # terms (1−1)², (3−1)², (√2−s)², (2−s)² over 4
    expected = (0.0 + 4.0 + (SQ2 - s) ** 2 + (2 - s) ** 2) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # with the stale centres (0, 0) it would be (1 + 9 + 2 + 4)/4 = 4
    assert mar.cml_loss(means, stds, mu0, sigma0).item() == pytest.approx(4.0)
    loss.backward()
    assert log_ml.grad is not None and torch.isfinite(log_ml.grad).all()


def test_cml_loss_without_valid_camera_is_zero_and_backward_able():
    log_ml = _t([[0.0, 1.0], [2.0, 3.0]], grad=True)
    cams = torch.tensor([0, 1])
    means, stds = mar.camera_moments(log_ml, cams)
    mu, sigma = mar.update_centres(_t([1.0, 1.0]), _t([1.0, 1.0]), means, stds, eta=0.5)
    assert torch.equal(mu, _t([1.0, 1.0]))
    loss = mar.cml_loss(means, stds, mu, sigma)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(log_ml.grad, torch.zeros(2, 2, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# memory, agreement, threshold


def test_update_memory_first_then_later_visit():
    memory = torch.zeros(3, 2)
    visited = torch.zeros(3, dtype=torch.bool)
    ml = torch.tensor([[0.2, 0.8], [0.6, 0.4]], requires_grad=True)
    rows = mar.update_memory(memory, visited, torch.tensor([2, 0]), ml)
    # first visits store the multilabels as they are
    assert torch.allclose(rows, torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
    assert torch.allclose(memory, torch.tensor([[0.6, 0.4], [0.0, 0.0], [0.2, 0.8]]))
    assert visited.tolist() == [True, False, True]
    assert not memory.requires_grad
    rows = mar.update_memory(memory, visited, torch.tensor([0, 1]), torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    # row 0: .9·(.6,.4) + .1·(1,0) = (.64, .36); row 1 first visit: (.5, .5)
    assert torch.allclose(rows, torch.tensor([[0.64, 0.36], [0.5, 0.5]]))
    assert torch.equal(rows, memory[torch.tensor([0, 1])])
    assert torch.allclose(memory[2], torch.tensor([0.2, 0.8]))
    assert visited.all()
    # momentum parameter: row 2 with momentum .5: .5·(.2,.8) + .5·(0,1) = (.1, .9)
    rows = mar.update_memory(memory, visited, torch.tensor([2]), torch.tensor([[0.0, 1.0]]), momentum=0.5)
    assert torch.allclose(rows, torch.tensor([[0.1, 0.9]]))
    with pytest.raises(ValueError, match="duplicate indices"):
        mar.update_memory(memory, visited, torch.tensor([1, 1]), torch.ones(2, 2))


def test_agreement_and_pair_agreements_by_hand():
    a = _t([[1.0, 0.0, 0.0]])
    b = _t([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # L1 = 1, 0, 2 → 1 − L1/2 = .5, 1, 0
    assert torch.allclose(mar.agreement(a, b), _t([[0.5, 1.0, 0.0]]))
    # pairs of b in pdist order (0,1), (0,2), (1,2): L1 1, 2, 2 → .5, 0, 0
    assert torch.allclose(mar.pair_agreements(b), _t([0.5, 0.0, 0.0]))


def test_mining_count():
    assert mar.mining_count(184, 0.005) == 84  # 16836 pairs · .005 = 84.18
    assert mar.mining_count(20, 0.005) == 0  # 190 · .005 = .95
    assert mar.mining_count(21, 0.005) == 1  # 210 · .005 = 1.05
    assert mar.mining_count(4, 0.5) == 3
    assert mar.mining_count(1, 0.5) == 0 and mar.mining_count(0, 0.5) == 0


def test_top_agreement():
    v = _t([0.1, 0.9, 0.5, 0.7])
    # sorted (.1, .5, .7, .9)[−int(4·.5)] = [−2] = .7
    assert mar.top_agreement(v, 0.5).item() == pytest.approx(0.7)
    assert mar.top_agreement(v, 0.25).item() == pytest.approx(0.9)  # [−1]
    # int(4·.1) = 0 → clamped to 1 → the largest (official sorted[−0] would give the smallest)
    assert mar.top_agreement(v, 0.1).item() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="no pair agreements"):
        mar.top_agreement(torch.zeros(0), 0.5)


def _naive_threshold(m: np.ndarray, ratio: float) -> float:
    vals = []
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            vals.append(1 - sum(abs(float(x) - float(y)) for x, y in zip(m[i], m[j])) / 2)
    vals.sort()
    return vals[-max(1, int(len(vals) * ratio))]


@pytest.mark.parametrize("block", [1, 3, 4, 1024])
def test_initial_threshold_against_naive_sort_exact(block):
    # rows are distributions in multiples of 1/8: every L1 distance is exact in float32
    rng = np.random.default_rng(3)
    counts = np.stack([rng.multinomial(8, [0.25] * 4) for _ in range(11)])
    m = torch.tensor(counts / 8.0, dtype=torch.float32)
    for ratio in (0.1, 0.3, 0.01):  # 55 pairs → 5th, 16th largest; int(.55) = 0 → largest
        assert mar.initial_threshold(m, ratio, block=block) == _naive_threshold(counts / 8.0, ratio)


def test_initial_threshold_random_rows_and_errors():
    g = torch.Generator().manual_seed(1)
    m = torch.softmax(3 * torch.randn(23, 6, generator=g, dtype=torch.float64), dim=1)
    for block in (5, 22, 23, 64):
        assert mar.initial_threshold(m, 0.05, block=block) == pytest.approx(_naive_threshold(m.numpy(), 0.05),
                                                                             abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        mar.initial_threshold(m[:1], 0.5)
    with pytest.raises(ValueError, match="block must be"):
        mar.initial_threshold(m, 0.5, block=0)


def test_update_threshold():
    assert mar.update_threshold(0.5, 0.9) == pytest.approx(0.54)  # .9·.5 + .1·.9
    assert mar.update_threshold(0.5, torch.tensor(0.9), momentum=0.5) == pytest.approx(0.7)


# --------------------------------------------------------------------------------------------
# mining and L_MDL

# z0 = (1,0), z1 = (.8,.6), z2 = (−1,0): d²01 = .04+.36 = .4, d²02 = 4, d²12 = 3.24+.36 = 3.6
Z3 = [[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]]
# multilabel rows: A01 = 1, A02 = 0, A12 = 0
ML3 = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def test_mine_pairs_and_mdl_loss_empty_negatives():
    z = _t(Z3, grad=True)
    # int(3·.5) = 1 pair: the closest, (0,1), with A = 1 > .5 → P = {(0,1)}, N = ∅
    pairs = mar.mine_pairs(z, _t(ML3), threshold=0.5, ratio=0.5)
    assert pairs.positive.tolist() == [[0, 1]] and pairs.negative.shape == (0, 2)
    loss = mar.mdl_loss(z, pairs)
    # −log P̄ + log(P̄ + .5) with P̄ = e^−.4: .4 + log(e^−.4 + .5)
    assert loss.item() == pytest.approx(0.4 + math.log(math.exp(-0.4) + 0.5), abs=1e-12)
    loss.backward()
    assert z.grad is not None and z.grad[2].abs().sum() == 0


def test_mine_pairs_and_mdl_loss_empty_positives():
    z = _t(Z3, grad=True)
    # A01 = 1 is not > 1 → P = ∅, N = {(0,1)}: L = log(1 + e^−.4)
    pairs = mar.mine_pairs(z, _t(ML3), threshold=1.0, ratio=0.5)
    assert pairs.positive.shape == (0, 2) and pairs.negative.tolist() == [[0, 1]]
    loss = mar.mdl_loss(z, pairs)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.4)), abs=1e-12)
    loss.backward()
    assert z.grad[0].abs().sum() > 0


def test_mine_pairs_all_pairs_by_hand():
    z = _t(Z3, grad=True)
    # ratio 1: all 3 pairs in distance order (0,1) .4, (1,2) 3.6, (0,2) 4
    pairs = mar.mine_pairs(z, _t(ML3), threshold=0.5, ratio=1.0)
    assert pairs.positive.tolist() == [[0, 1]]
    assert pairs.negative.tolist() == [[1, 2], [0, 2]]
    # −log e^−.4 + log(e^−.4 + (e^−3.6 + e^−4)/2)
    expected = 0.4 + math.log(math.exp(-0.4) + (math.exp(-3.6) + math.exp(-4.0)) / 2)
    assert mar.mdl_loss(z, pairs).item() == pytest.approx(expected, abs=1e-12)


def test_mine_pairs_tiny_batch_mines_nothing():
    z = _t(Z3, grad=True)
    pairs = mar.mine_pairs(z, _t(ML3), threshold=0.5, ratio=0.1)  # int(3·.1) = 0
    assert pairs.positive.shape == (0, 2) and pairs.negative.shape == (0, 2)
    loss = mar.mdl_loss(z, pairs)
    assert loss.item() == pytest.approx(math.log(1.5))  # P̄ = 1 without numerator, N̄ = .5
    loss.backward()
    assert torch.equal(z.grad, torch.zeros(3, 2, dtype=torch.float64))


def test_mine_pairs_and_mdl_loss_against_loop():
    g = torch.Generator().manual_seed(7)
    n = 12
    z = F.normalize(torch.randn(n, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    ml = torch.softmax(2 * torch.randn(n, 4, generator=g, dtype=torch.float64), dim=1)
    ratio = 0.2  # 66 pairs → 13 mined
    zl, ml_l = z.tolist(), ml.tolist()
    all_pairs = list(itertools.combinations(range(n), 2))
    d2 = {(i, j): sum((a - b) ** 2 for a, b in zip(zl[i], zl[j])) for i, j in all_pairs}
    agree = {(i, j): 1 - sum(abs(a - b) for a, b in zip(ml_l[i], ml_l[j])) / 2 for i, j in all_pairs}
    threshold = sorted(agree.values())[len(agree) // 2]
    closest = sorted(all_pairs, key=lambda p: d2[p])[:13]
    pos = [p for p in closest if agree[p] > threshold]
    neg = [p for p in closest if agree[p] <= threshold]
    assert pos and neg
    pairs = mar.mine_pairs(z, ml, threshold, ratio)
    assert [tuple(p) for p in pairs.positive.tolist()] == pos
    assert [tuple(p) for p in pairs.negative.tolist()] == neg
    p_bar = sum(math.exp(-d2[p]) for p in pos) / len(pos)
    n_bar = sum(math.exp(-d2[p]) for p in neg) / len(neg)
    loss = mar.mdl_loss(z, pairs)
    assert loss.item() == pytest.approx(-math.log(p_bar / (p_bar + n_bar)), abs=1e-12)
    loss.backward()
    assert z.grad.abs().sum() > 0
    # the batch threshold quantile over the same agreements: int(66·.2) = 13th largest
    t_batch = mar.top_agreement(mar.pair_agreements(ml), ratio).item()
    assert t_batch == pytest.approx(sorted(agree.values())[-13], abs=1e-12)
