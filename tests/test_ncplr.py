"""NCPLR / GL-NCPLR (ALGORITHMS.md §7): neighbour sets, in-batch ensembles, refined targets, the
sampler variant, disjoint stripes, the DDP gather and the CLI, against hand computations and a
dense re-implementation of the official ``get_refinelabels`` / ``RefineLabels.forward``."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from reidctl.artifacts import read_labels, write_features
from reidctl.data.datasets import load_dataset
from reidctl.data.samplers import identity_balanced_order, pass_length
from reidctl.errors import ReidctlError
from reidctl.methods import NCPLR, get_method
from reidctl.methods.base import Batch, EpochData
from reidctl.methods.ncplr import neighbours as nb
from reidctl.methods.ncplr import targets as tg
from reidctl.methods.ncplr.method import GLNCPLR, NCPLRParams, NCPLRSwitches, mixture
from reidctl.methods.plan import model_settings
from reidctl.models.reid import GeneralizedMeanPooling, ModelConfig, ReidModel, stripe_bounds
from reidctl.train.heads import CentroidClassifiers
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market
from tests.looptools import CLI_ARGS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_features(tmp_path_factory):
    """8 identities × 2 cameras × 2 images; features near their identity's centre, two halves."""
    root = tmp_path_factory.mktemp("ncplr")
    ds = load_dataset(colour_market(root / "market", train_ids=8, test_ids=2, per_camera=2))
    rng = np.random.default_rng(0)
    pids = np.array([s.pid for s in ds.train])
    centres = rng.normal(size=(pids.max() + 1, 3, 64))
    x = centres[pids] + 0.3 * rng.normal(size=(len(pids), 3, 64))
    x = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    path = root / "feats.h5"
    write_features(path, x[:, 0], parts=x[:, 1:], camids=np.array([s.camid for s in ds.train]),
                   paths=[s.relpath for s in ds.train], split=["train"] * len(pids))
    return path

# ---------------------------------------------------------------------------------- stripes


def test_stripe_bounds_disjoint_and_adaptive():
    assert stripe_bounds(20, 2) == [(0, 10), (10, 20)]  # GL-NCPLR's halves of a 320×128 input
    assert stripe_bounds(7, 2) == [(0, 3), (3, 7)]  # H//2, no shared row
    assert stripe_bounds(8, 3) == [(0, 2), (2, 5), (5, 8)]
    assert stripe_bounds(24, 3) == [(0, 8), (8, 16), (16, 24)]  # PPLR's official map
    assert stripe_bounds(8, 3, "adaptive") == [(0, 3), (2, 6), (5, 8)]  # AdaptiveAvgPool2d's overlap


def test_halves_pool_disjoint_rows_with_their_own_exponent():
    x = torch.rand(2, 4, 7, 3) + 0.1
    gem = GeneralizedMeanPooling(bins=2)
    with torch.no_grad():
        gem.p.copy_(torch.tensor([2.0, 4.0]))
    out = gem(x)
    assert torch.allclose(out[..., 0], x[:, :, :3].pow(2).mean((2, 3)).pow(0.5), atol=1e-6)
    assert torch.allclose(out[..., 1], x[:, :, 3:].pow(4).mean((2, 3)).pow(0.25), atol=1e-6)
    model = ReidModel(ModelConfig(arch="resnet18", pooling="avg", parts=3, height=64, width=32))
    fmap = torch.rand(2, 512, 8, 4)
    assert torch.allclose(model.part_pool(fmap)[..., 0], fmap[:, :, :2].mean((2, 3)))


def test_checkpoint_config_without_part_split_keeps_adaptive_stripes():
    old = {"arch": "resnet18", "pooling": "avg", "parts": 3, "last_stride": 1, "height": 64, "width": 32}
    assert ModelConfig.from_dict(old).part_split == "adaptive"
    assert isinstance(ReidModel(ModelConfig.from_dict(old)).part_pool, torch.nn.AdaptiveAvgPool2d)
    with pytest.raises(ReidctlError, match="unknown --part-split 'halves'"):
        ModelConfig(part_split="halves")


# ---------------------------------------------------------------------------------- defaults


def test_official_model_and_clustering_follow_global_local():
    gl = NCPLRSwitches(global_local=True)
    assert NCPLR.official_model(NCPLRSwitches()) == {"pooling": "gem", "height": 320, "width": 128, "parts": 0}
    assert NCPLR.official_model(gl)["parts"] == 2
    assert NCPLR.official_clustering(NCPLRSwitches()) == {"eps": 0.5}
    assert NCPLR.official_clustering(gl)["branches"] == "global=0.6,part0=0.2,part1=0.2"
    assert mixture(0.25) == "global=0.5,part0=0.25,part1=0.25"
    assert model_settings(NCPLR, {"height": 128}, gl) == model_settings(GLNCPLR, {"height": 128}) == {
        "pooling": "gem", "parts": 2, "height": 128, "width": 128, "last_stride": 1, "neck": "bn", "last_relu": True,
        "input_norm": "imagenet"}
    p = NCPLRParams()
    assert (p.batch_size, p.num_instances, p.iters, p.sampler_anchor, p.alpha, p.cmalpha, p.lambda2, p.temp_kl,
            p.neighbor_temp, p.momentum, p.temperature) == (256, 16, 200, "last", 0.1, 0.3, 0.2, 5.0, 1.0, 0.1, 0.05)
    assert NCPLR.RefineOptions().eps_neighbor == 0.2


# ---------------------------------------------------------------------------------- neighbour sets


def _distance() -> sp.csr_matrix:
    """5 rows; unstored = 1. Explicit zeros: the diagonal and the pair (0, 1)."""
    rows = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    cols = [0, 1, 2, 0, 1, 0, 2, 4, 3, 4, 2, 4]
    vals = [0, 0, 0.3, 0, 0, 0.3, 0, 0.15, 0, 0.2, 0.15, 0]
    indptr = np.searchsorted(rows, np.arange(6))
    return sp.csr_matrix((np.array(vals, np.float32), np.array(cols), indptr), shape=(5, 5))


def test_neighbour_sets_keep_zero_distances_and_drop_outliers():
    labels = np.array([0, 0, 1, -1, 1])
    sets = nb.neighbour_sets(_distance(), labels, 0.2)
    got = {(i, int(j)): float(v) for i in range(5)
           for j, v in zip(sets.indices[sets.indptr[i]:sets.indptr[i + 1]], sets.data[sets.indptr[i]:sets.indptr[i + 1]])}
    # D ≤ 0.2 among clustered rows (row/column 3 is an outlier); 0.3 is too far
    assert got == pytest.approx({(0, 0): 0.0, (0, 1): 0.0, (1, 0): 0.0, (1, 1): 0.0, (2, 2): 0.0, (2, 4): 0.15,
                                 (4, 2): 0.15, (4, 4): 0.0})
    with pytest.raises(ReidctlError, match=r"--eps-neighbor 1.0: must lie in \[0, 1\)"):
        nb.neighbour_sets(_distance(), labels, 1.0)


def test_epoch_neighbours_reindex_both_axes():
    labels = np.array([0, 0, 1, -1, 1])
    sets = nb.neighbour_sets(_distance(), labels, 0.2)
    epoch = nb.epoch_neighbours(sets, np.array([0, 1, 2, 4]))
    dense = np.full((4, 4), np.nan)
    coo = epoch.tocoo()
    dense[coo.row, coo.col] = coo.data
    expected = np.full((4, 4), np.nan)
    expected[[0, 0, 1, 1, 2, 3, 2, 3], [0, 1, 0, 1, 2, 3, 3, 2]] = [0, 0, 0, 0, 0, 0, 0.15, 0.15]
    np.testing.assert_allclose(dense, expected, atol=1e-7)


def test_batch_pairs_collapse_repeats_to_their_first_occurrence():
    sets = nb.epoch_neighbours(nb.neighbour_sets(_distance(), np.array([0, 0, 1, -1, 1]), 0.2),
                               np.array([0, 1, 2, 4]))  # epoch positions 0..3 = train rows 0,1,2,4
    index = np.array([3, 0, 2, 3, 1])  # position 3 twice; 0 and 1 are neighbours, 2 and 3 too
    r, b, d = nb.batch_pairs(sets, index, slice(0, 5))
    got = sorted(zip(r.tolist(), b.tolist(), [round(float(v), 3) for v in d]))
    assert got == [(0, 0, 0.0), (0, 2, 0.15), (1, 1, 0.0), (1, 4, 0.0), (2, 0, 0.15), (2, 2, 0.0),
                   (3, 0, 0.0), (3, 2, 0.15), (4, 1, 0.0), (4, 4, 0.0)]
    r, b, _ = nb.batch_pairs(sets, index, slice(3, 5))  # a rank's rows: r counts from the slice
    assert sorted(zip(r.tolist(), b.tolist())) == [(0, 0), (0, 2), (1, 1), (1, 4)]


def test_neighbour_weights_both_signs_and_mean_by_hand():
    r = torch.tensor([0, 0, 0, 1])
    d = torch.tensor([0.0, 0.1, 0.2, 0.0])
    z = 1 + math.exp(0.1) + math.exp(0.2)
    official = nb.neighbour_weights(r, d, 2, "official", 1.0)
    assert official.tolist() == pytest.approx([1 / z, math.exp(0.1) / z, math.exp(0.2) / z, 1.0])
    zp = 1 + math.exp(-0.1) + math.exp(-0.2)
    assert nb.neighbour_weights(r, d, 2, "paper", 1.0).tolist() == pytest.approx(
        [1 / zp, math.exp(-0.1) / zp, math.exp(-0.2) / zp, 1.0])
    assert nb.neighbour_weights(r, d, 2, "mean", 1.0).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    half = nb.neighbour_weights(r, d, 2, "official", 0.5)  # T_n = 0.5 doubles the exponents
    assert half[2].item() == pytest.approx(math.exp(0.4) / (1 + math.exp(0.2) + math.exp(0.4)))


# ---------------------------------------------------------------------------------- official reference


def official_ensemble(logits, indexes, neighbors, dists, temp=1.0, option=1):
    """``get_refinelabels`` of the official cm.py with ce_alpha 0, rewritten densely for the test."""
    unique = indexes.unique()
    first = torch.tensor([int((u == indexes).nonzero()[0]) for u in unique])
    logits_u = logits[first]
    bn = neighbors[indexes][:, unique]
    bd = dists[indexes][:, unique]
    out = []
    for i in range(len(logits)):
        nbr = bn[i].nonzero().flatten()
        p = torch.softmax(logits_u[nbr], 1)
        if option == 0:
            out.append(p.mean(0))
        else:
            out.append((p * torch.softmax(bd[i][nbr] / temp, 0)[:, None]).sum(0))
    return torch.stack(out)


def official_gl_loss(lg, lu, ld, y, e_g, e_u, e_d, alpha, cmalpha, t_kl, lambda2):
    """``RefineLabels.forward`` with extra-option 2 and parts, from the official code, densely."""
    kl = torch.nn.KLDivLoss(reduction="none")
    onehot = torch.zeros_like(lg).scatter_(1, y[:, None], 1)
    wu = torch.exp(-kl(torch.log(e_u), e_g).sum(1) / t_kl)[:, None]
    wd = torch.exp(-kl(torch.log(e_d), e_g).sum(1) / t_kl)[:, None]
    eg = (e_g + wu * e_u + wd * e_d) / (1 + wu + wd)
    loss = (-(alpha * onehot + (1 - alpha) * eg) * F.log_softmax(lg, 1)).sum(1).mean()
    wu = torch.exp(-kl(torch.log(e_g), e_u).sum(1) / t_kl)[:, None]
    wd = torch.exp(-kl(torch.log(e_g), e_d).sum(1) / t_kl)[:, None]
    tu = cmalpha * onehot + (1 - cmalpha) * (e_u + wu * e_g) / (1 + wu)
    td = cmalpha * onehot + (1 - cmalpha) * (e_d + wd * e_g) / (1 + wd)
    lu_ = (-tu * F.log_softmax(lu, 1)).sum(1).mean()
    ld_ = (-td * F.log_softmax(ld, 1)).sum(1).mean()
    return (1 - lambda2) * loss + lambda2 * lu_ + lambda2 * ld_


def _random_case(n=12, batch=10, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, n, generator=g) * 0.4
    dense = (dense + dense.t()) / 2
    dense.fill_diagonal_(0)
    dense[dense > 0.3] = 1.0  # beyond the kNN lists
    distance = sp.csr_matrix((dense.numpy()[dense.numpy() < 1], np.nonzero(dense.numpy() < 1)[1],
                              np.concatenate([[0], np.cumsum((dense.numpy() < 1).sum(1))])), shape=(n, n))
    index = torch.randint(0, n, (batch,), generator=g)
    logits = torch.randn(batch, k, generator=g) * 3
    y = torch.randint(0, k, (batch,), generator=g)
    return dense, distance, index, logits, y


@pytest.mark.parametrize("weight,option", [("official", 1), ("mean", 0)])
def test_ensemble_equals_the_official_dense_loop(weight, option):
    dense, distance, index, logits, _ = _random_case()
    eps = 0.2
    sets = nb.neighbour_sets(distance, np.zeros(len(dense), dtype=int), eps)
    r, b, d = nb.batch_pairs(sets, index.numpy(), slice(0, len(index)))
    r, b, d = torch.as_tensor(r), torch.as_tensor(b), torch.as_tensor(d)
    ours = nb.ensemble(torch.softmax(logits, 1), r, b, nb.neighbour_weights(r, d, len(index), weight), len(index))
    ref = official_ensemble(logits, index, dense <= eps, dense, option=option)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_global_local_targets_by_hand():
    e_g = torch.tensor([[0.5, 0.5]])
    e_u = torch.tensor([[0.75, 0.25]])
    y = torch.tensor([0])
    kl_gu = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_ug = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    w, w2 = math.exp(-kl_gu / 5), math.exp(-kl_ug / 5)
    t_g, t_u = tg.global_local_targets(e_g, [e_u], y, alpha=0.1, cmalpha=0.3, temperature=5.0)
    mixed0 = (0.5 + w * 0.75) / (1 + w)
    assert t_g[0].tolist() == pytest.approx([0.1 + 0.9 * mixed0, 0.9 * (1 - mixed0)])
    mixed_u0 = (0.75 + w2 * 0.5) / (1 + w2)
    assert t_u[0].tolist() == pytest.approx([0.3 + 0.7 * mixed_u0, 0.7 * (1 - mixed_u0)])
    assert tg.plain_target(e_u, torch.tensor([1]), 0.1)[0].tolist() == pytest.approx([0.675, 0.325])
    assert tg.branch_weights(3, 0.2) == pytest.approx([0.8, 0.2, 0.2]) and tg.branch_weights(1, 0.2) == [1.0]


def test_refine_loss_equals_the_official_global_local_loss():
    dense, distance, index, lg, y = _random_case(seed=3)
    lu, ld = lg.roll(1, 1) * 0.5, lg.flip(1)
    sets = nb.neighbour_sets(distance, np.zeros(len(dense), dtype=int), 0.2)
    r, b, d = (torch.as_tensor(a) for a in nb.batch_pairs(sets, index.numpy(), slice(0, len(index))))
    w = nb.neighbour_weights(r, d, len(index))
    e = [nb.ensemble(torch.softmax(x, 1), r, b, w, len(index)) for x in (lg, lu, ld)]
    targets = tg.global_local_targets(e[0], e[1:], y, alpha=0.1, cmalpha=0.3, temperature=5.0)
    ours = tg.refine_loss([lg, lu, ld], targets, 0.2)
    ref_e = [official_ensemble(x, index, dense <= 0.2, dense) for x in (lg, lu, ld)]
    ref = official_gl_loss(lg, lu, ld, y, *ref_e, 0.1, 0.3, 5.0, 0.2)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


# ---------------------------------------------------------------------------------- method state and loss


def _epoch(n=12, k=3, parts=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    feats = F.normalize(torch.as_tensor(rng.normal(size=(n, 8)), dtype=torch.float32), dim=1).numpy()
    part = F.normalize(torch.as_tensor(rng.normal(size=(n, parts, 8)), dtype=torch.float32), dim=2).numpy()
    dense, distance, _, _, _ = _random_case(n=n, seed=seed)
    sets = nb.neighbour_sets(distance, labels, 0.2)
    return EpochData(labels=labels, camids=np.zeros(n, dtype=np.int64), features=feats, parts=part,
                     rows=np.arange(n), num_clusters=k, extra={"neighbors": sets}), dense


def test_loss_is_nce_plus_the_official_refine_loss():
    data, dense = _epoch()
    method = NCPLR(NCPLRParams(global_local=True, classifier_rows=10))
    heads = CentroidClassifiers(8, 2, 10)
    state = method.make_state(data, heads)
    assert torch.allclose(heads.classifier.weight[:3], state.memories[0].features)
    g = torch.Generator().manual_seed(1)
    index = torch.tensor([0, 3, 6, 1, 4, 1])
    outputs = {"global": torch.randn(6, 8, generator=g), "parts": torch.randn(6, 2, 8, generator=g)}
    outputs.update(heads(outputs))
    batch = Batch(torch.zeros(6, 3, 4, 4), torch.as_tensor(data.labels[index]), torch.zeros(6, dtype=torch.long), index)
    loss, logs = method.loss(batch, outputs, state)
    y = batch.labels
    nce = sum(w * F.cross_entropy(F.normalize(f, dim=1) @ m.features.t() / 0.05, y)
              for w, f, m in zip([0.8, 0.2, 0.2], [outputs["global"], *outputs["parts"].unbind(1)], state.memories))
    lg, lu, ld = outputs["logits"], outputs["part_logits"][:, 0], outputs["part_logits"][:, 1]
    ref_e = [official_ensemble(x.detach(), index, dense <= 0.2, dense) for x in (lg, lu, ld)]
    ref = official_gl_loss(lg, lu, ld, y, *ref_e, 0.1, 0.3, 5.0, 0.2)
    assert logs["nce"].item() == pytest.approx(nce.item(), rel=1e-5)
    assert logs["refine"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert loss.item() == pytest.approx(nce.item() + ref.item(), rel=1e-5)
    off = NCPLR(NCPLRParams(global_local=True, classifier_rows=10, refine_loss=False))
    assert off.loss(batch, outputs, off.make_state(data, heads))[0].item() == pytest.approx(nce.item(), rel=1e-5)


def test_make_state_refuses_a_labels_file_without_neighbour_sets():
    data, _ = _epoch()
    data.extra = {}
    with pytest.raises(ReidctlError, match="no 'neighbors': make it with `reidctl refine --method ncplr`"):
        NCPLR(NCPLRParams(classifier_rows=10)).make_state(data, CentroidClassifiers(8, 0, 10))


# ---------------------------------------------------------------------------------- DDP gather


def _ddp_worker(rank: int, init: str, result: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        data, _ = _epoch()
        method = NCPLR(NCPLRParams(global_local=True, classifier_rows=10))
        state = method.make_state(data, CentroidClassifiers(8, 2, 10))
        index, logits = _ddp_batch()
        half = slice(rank * 4, rank * 4 + 4)
        batch = Batch(torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                      index[half])
        out = method.ensembles(batch, [x[half] for x in logits], state)
        torch.save([e for e in out], f"{result}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def _ddp_batch():
    g = torch.Generator().manual_seed(5)
    index = torch.tensor([0, 3, 6, 9, 1, 4, 0, 2])  # row 0 on both ranks; neighbours across ranks
    return index, [torch.randn(8, 3, generator=g) for _ in range(3)]


def test_ddp_ensembles_see_the_whole_global_batch(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(f"file://{tmp_path}/init", str(tmp_path / "out")), nprocs=2)
    data, _ = _epoch()
    method = NCPLR(NCPLRParams(global_local=True, classifier_rows=10))
    state = method.make_state(data, CentroidClassifiers(8, 2, 10))
    index, logits = _ddp_batch()
    batch = Batch(torch.zeros(8, 3, 4, 4), torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long), index)
    single = method.ensembles(batch, logits, state)
    ranks = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    for branch in range(3):
        torch.testing.assert_close(torch.cat([ranks[0][branch], ranks[1][branch]]), single[branch])
    # without the gather a rank would miss its neighbours on the other rank: the case must test that
    local = method.ensembles(Batch(batch.images[:4], batch.labels[:4], batch.camids[:4], index[:4]),
                             [x[:4] for x in logits], state)
    assert not torch.allclose(local[0], single[0][:4])


# ---------------------------------------------------------------------------------- sampler variant


def test_anchor_last_sampler_puts_the_anchor_after_its_companions_and_drops_singletons():
    labels = np.array([0, 0, 0, 1, 2, 2, 2, 2])
    camids = np.array([0, 1, 1, 0, 0, 0, 1, 1])
    first = identity_balanced_order(labels, camids, 3, np.random.default_rng(4))
    last = identity_balanced_order(labels, camids, 3, np.random.default_rng(4), anchor="last")
    assert 3 in first and 3 not in last  # the single-image identity: anchor alone vs nothing
    blocks = []
    i = 0
    while i < len(first):  # CC's order: [anchor, c1, c2] per identity, [3] for the singleton
        size = 1 if first[i] == 3 else 3
        blocks.append(first[i:i + size])
        i += size
    expected = [b[1:] + b[:1] for b in blocks if b != [3]]  # the same draws, anchor moved last
    assert last == [x for b in expected for x in b]
    assert pass_length(labels, 3) == 7 and pass_length(labels, 3, "last") == 6
    with pytest.raises(ReidctlError, match="--sampler-anchor middle: choose first or last"):
        identity_balanced_order(labels, camids, 3, np.random.default_rng(0), anchor="middle")


# ---------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_loop_gl_ncplr_end_to_end(tmp_path):
    run = tmp_path / "run"
    r = run_ok("loop", "--data", "synthetic:tiny", "--run-dir", run, "--method", "ncplr", "--global-local",
               *CLI_ARGS, "--eps", "0.6", "--batch-size", "16", "--num-instances", "4", "--iters", "2",
               "--epochs", "1", "--eval-every", "1", "--json")
    res = json.loads(r.stdout)
    assert res["method"] == "ncplr" and "mAP" in res["last"]
    with h5py.File(run / "epoch_000" / "labels.h5") as f:
        assert json.loads(f.attrs["params"])["branches"] == "global=0.6,part0=0.2,part1=0.2"
    lab = read_labels(run / "epoch_000" / "refined.h5")
    sets = lab.extra["neighbors"]
    assert sp.issparse(sets) and sets.diagonal()[lab.labels >= 0].max() == 0.0
    assert (np.diff(sets.indptr)[lab.labels < 0] == 0).all()
    ckpt = torch.load(run / "epoch_000" / "model.pt", weights_only=False)
    assert ckpt["model_config"]["parts"] == 2 and ckpt["model_config"]["part_split"] == "disjoint"
    assert ckpt["method_params"]["sampler_anchor"] == "last" and ckpt["method_params"]["global_local"]


def test_refine_cli_stores_neighbour_sets_and_refuses_foreign_options(tmp_path, small_features):
    out = tmp_path / "refined.h5"
    r = run_ok("refine", "--method", "ncplr", small_features, "--out", out, "--k1", "6", "--k2", "2",
               "--eps-neighbor", "0.3", "--json")
    summary = json.loads(r.stdout)
    lab = read_labels(out)
    assert summary["neighbour_pairs"] == lab.extra["neighbors"].nnz > 0
    assert lab.extra["neighbors"].data.max() <= 0.3
    run_error("refine", "--method", "cc", small_features, "--out", tmp_path / "x.h5", "--eps-neighbor", "0.3",
              match=r"--eps-neighbor .*\(an option of gl-ncplr, ncplr\)")
    with pytest.raises(ReidctlError, match="choose one of official, paper, mean"):
        get_method("ncplr").resolve_params(None, {"neighbor_weight": "closest"})


def test_train_epoch_refuses_lambda1_which_only_the_clustering_reads(tmp_path):
    """``--lambda1`` sets the clustering's distance mixture: a single training epoch would accept
    and ignore it (issue 28); it is refused, naming the stage that reads it, before any work."""
    data = colour_market(tmp_path / "data", train_ids=4, test_ids=2)
    for method in ("ncplr", "gl-ncplr"):
        run_error("train-epoch", "--method", method, "--data", data, "--labels", tmp_path / "none.h5",
                  "--out", tmp_path / "m.pt", "--lambda1", "0.3", "--pretrained", "none",
                  match=r"--lambda1 is read by the cluster stage, not by `train-epoch`")
    assert not (tmp_path / "m.pt").exists()
    # the loop's plan still takes it: the clustering reads it, the training never sees it
    plan = get_method("gl-ncplr").plan({"lambda1": 0.3, "lambda2": 0.1})
    assert plan.train_given == {"lambda2": 0.1} and "lambda1" not in plan.train.to_dict()
    assert plan.cluster.branches == "global=0.4,part0=0.3,part1=0.3" and plan.switches.lambda1 == 0.3
    # --global-local is read by the training too: train-epoch hands it on with the training options
    plan = get_method("ncplr").plan({"global_local": True, "lambda2": 0.1}, stage="train")
    assert plan.train_given == {"global_local": True, "lambda2": 0.1} and plan.train.global_local
    assert plan.cluster is None


def test_refine_clusters_under_the_switches_and_refuses_them_with_labels(tmp_path, small_features):
    """``refine`` clusters (without ``--labels``) on the mixture the switches choose; given a
    labels file, which is already clustered, a switch that only the clustering reads is refused."""
    plan = get_method("ncplr").plan({"global_local": True, "lambda1": 0.1, "eps_neighbor": 0.3}, stage="refine")
    assert plan.cluster.branches == "global=0.8,part0=0.1,part1=0.1" and plan.refine == {"eps_neighbor": 0.3}
    assert set(plan.cluster_given) == {"global_local", "lambda1"}
    labels = tmp_path / "labels.h5"
    run_ok("cluster", small_features, "--out", labels, "--k1", "6", "--k2", "2")
    run_error("refine", "--method", "gl-ncplr", small_features, "--labels", labels, "--out", tmp_path / "r.h5",
              "--lambda1", "0.3", match="clustering options apply only without --labels")
    with pytest.raises(ReidctlError, match="--lambda1 must lie in"):
        get_method("gl-ncplr").plan({"lambda1": 0.5})


@pytest.mark.slow
def test_ablation_script_prints_one_row_per_run(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    wrapper = tmp_path / "reidctl"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reidctl "$@"\n')
    wrapper.chmod(0o755)
    script = Path(__file__).parents[1] / "examples" / "ncplr_ablation.sh"
    env = {**os.environ, "REIDCTL": str(wrapper), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(script), "synthetic:tiny", str(tmp_path / "out"), *CLI_ARGS,
                           "--eps", "0.6", "--batch-size", "16", "--num-instances", "4", "--iters", "1",
                           "--epochs", "1", "--eval-every", "1", "--no-eval-init"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert [r.split(" | ")[0] for r in rows] == ["| cc", "| ncplr", "| gl_ncplr", "| gl_ncplr_no_refine"]


def test_loop_takes_lambda1_and_hands_it_to_the_clustering(tmp_path):
    """The loop runs the cluster stage that reads ``--lambda1``: it is accepted there (only a
    single training epoch refuses it), and sets the distance mixture."""
    data = colour_market(tmp_path / "data", train_ids=4, test_ids=2)
    out = run_ok("loop", "--method", "gl-ncplr", "--data", data, "--run-dir", tmp_path / "run", "--lambda1", "0.3",
                 "--k1", "6", "--k2", "2", "--pretrained", "none", "--dry-run").stdout
    assert 'branches = "global=0.4,part0=0.3,part1=0.3"' in out and "lambda1 = 0.3" in out
