"""MAR (Yu et al., CVPR 2019): soft multilabel learning with a labelled auxiliary dataset.

MAR does not cluster. Each step takes one source batch (labelled) and one target batch
(unlabelled) through the model in two passes (per-domain BatchNorm statistics) and combines
(ALGORITHMS.md §6.3): the agent learning loss L_AL and the rejection loss L_RJ on the source
(L_RJ also pushes target features off agents they crowd), the cross-view multilabel loss L_CML
that aligns every camera's distribution of target multilabels with running centres, and, from
epoch 1, the discriminative loss L_MDL on the closest target pairs, split into positives and
hard negatives by how much their remembered multilabels agree.

State that outlives an epoch (the N×K multilabel memory, the CML centres, the mining threshold
and the last epoch's mined positive pairs) goes through ``persistent_arrays`` into a file
beside each checkpoint, so a killed run resumes exactly. It is initialised when training first
starts, from the soft multilabels of the epoch's extracted target features (the official code
runs the model over its augmented training loader instead; see README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reidctl.errors import ReidctlError
from reidctl.methods.base import EpochData, Method, PairArray, Refined, RunDefaults, TrainParams
from reidctl.methods.mar import losses as L
from reidctl.train.agents import AgentClassifier
from reidctl.methods.mar.pretrain import PRETRAIN, AgentTraining, mar_transform
from reidctl.methods.mar.refine import MARRefineOptions, refine_mar
from reidctl.data.source import DEFAULT_SOURCE_SPLITS, SOURCE_SPLITS, SourceData, load_source
from reidctl.options import option, resolve, unused
from reidctl.train.contract import Forward, StepResult, StreamContext
from reidctl.train.joint import SourceParams
from reidctl.train.optim import LR_DROPS
from reidctl.train.streams import labelled_stream, zip_streams


@dataclass
class MARParams(TrainParams):
    """The official command's values (``main.py`` / ``args.yaml`` of KovenYu/MAR, §6.3-6.4)."""

    batch_size: int = field(default=368, metadata=option(
        "MAR: images per step, half source and half target (official 368 = 184 + 184)."))
    lr: float = field(default=2e-4, metadata=option("Learning rate."))
    weight_decay: float = field(default=2.5e-2, metadata=option("Weight decay (MAR: none on BatchNorm parameters)."))
    # one pass over the source per epoch, shuffled batches, a MultiStep schedule: unused here
    iters: int = field(default=200, metadata=unused())
    num_instances: int = field(default=1, metadata=unused())
    step_size: int = field(default=20, metadata=unused())
    sampler_anchor: str = field(default="first", metadata=unused())
    momentum: float = field(default=0.9, metadata=option("SGD momentum."))
    gamma: float = field(default=0.1, metadata=option("MultiStep lr factor (at 5/8 and 7/8 of the run)."))
    lr_drops: str = field(default="milestones", metadata=option(
        "MAR: when the lr drops: milestones (at epochs 12 and 17 of 20, as the authors' PyTorch 1.0.0 ran the "
        "code: the published numbers) or early (one epoch before each, as the same code runs on PyTorch ≥ 1.1)."))
    schedule_epochs: int = field(default=20, metadata=option(
        "MAR: the run length its MultiStep schedule is laid out for (decays at 5/8 and 7/8 of it, stepped at the "
        "start of each epoch); `loop` sets it to --epochs."))
    #: The labelled source (its identities are the agents): not options here but the source
    #: section's (:class:`MARSource`), which the plan hands MAR's training by name.
    aux_data: str = ""
    aux_dataset: str | None = None
    aux_splits: str = DEFAULT_SOURCE_SPLITS
    scale: float = field(default=30.0, metadata=option("MAR: scale of the agent softmax (scala_ce)."))
    margin: float = field(default=1.0, metadata=option("MAR: L_RJ margin (an agent is hard above cos 1 − margin/2)."))
    cml_weight: float = field(default=2e-4, metadata=option("MAR: λ1, the weight of L_CML."))
    agent_weight: float = field(default=50.0, metadata=option("MAR: λ2, the weight of L_AL + β·L_RJ."))
    rejection_weight: float = field(default=0.2, metadata=option("MAR: β, the weight of L_RJ within λ2."))
    mining_ratio: float = field(default=0.005, metadata=option(
        "MAR: fraction of a batch's pairs mined (the closest), and the quantile of the agreement threshold."))
    memory_momentum: float = field(default=0.9, metadata=option("MAR: multilabel memory M ← m·M + (1−m)·l(x)."))
    threshold_momentum: float = field(default=0.9, metadata=option("MAR: threshold t ← m·t + (1−m)·t_batch."))
    mdl_from_epoch: int = field(default=1, metadata=option("MAR: first epoch with L_MDL and memory writes."))

    def check(self) -> None:
        super().check()
        if self.batch_size % 2 or self.batch_size < 4:
            raise ReidctlError(f"--batch-size {self.batch_size}: MAR splits a batch in a source and a target half, "
                               "so it must be even (and at least 4)")
        if self.lr_drops not in LR_DROPS:
            raise ReidctlError(f"--lr-drops {self.lr_drops}: choose one of {', '.join(LR_DROPS)}")
        if self.aux_splits not in SOURCE_SPLITS:
            raise ReidctlError(f"--aux-splits {self.aux_splits}: choose train or train,test")
        if self.scale <= 0 or self.margin <= 0 or self.schedule_epochs < 1 or self.mdl_from_epoch < 0:
            raise ReidctlError("--scale, --margin and --schedule-epochs must be positive, --mdl-from-epoch not negative")
        if not 0 < self.mining_ratio < 1:
            raise ReidctlError("--mining-ratio must lie in (0, 1)")
        for name in ("memory_momentum", "threshold_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ReidctlError(f"--{name.replace('_', '-')} must lie in [0, 1)")
        if min(self.cml_weight, self.agent_weight, self.rejection_weight) < 0:
            raise ReidctlError("loss weights must not be negative")

    @property
    def centre_rate(self) -> float:
        """η of the CML centres: ``batch_size / 10000`` as the official code sets it (0.0368)."""
        return self.batch_size / 10000


@dataclass
class MARSource(SourceParams):
    """MAR's source section: the source its agents learn from (``--aux-data``, required), with
    every identity by default (official: list_train + test of MSMT17). The joint step's weight,
    batch and scale are not MAR's: half of its batch is source, and ``--agent-weight``/``--scale``
    weigh its agent learning."""

    aux_splits: str = DEFAULT_SOURCE_SPLITS
    aux_weight: float = field(default=1.0, metadata=unused())
    aux_batch: int = field(default=64, metadata=unused())
    aux_scale: float = field(default=30.0, metadata=unused())


@dataclass
class MARState:
    """One epoch's bookkeeping: which epoch (L_MDL from ``mdl_from_epoch``) and what was mined."""

    epoch: int
    positives: list[torch.Tensor] = field(default_factory=list)  # mined positive pairs, target rows


class MAR(AgentTraining, Method):
    """``mar``: soft multilabel learning against the agents of a labelled source."""

    name = "mar"
    Params = MARParams
    params: MARParams
    clusters = False
    heads_from = ("pretrain",)
    learns_source = True
    Source = MARSource
    preludes = (PRETRAIN,)
    train_context = {"schedule_epochs": "epochs"}
    pair_arrays = (PairArray("mined_pairs", "mined positive pairs", "mined\npairs"),)
    #: The official model (§6.2): average pooling, no BN neck, last stride 2, no ReLU after the
    #: last ResNet block, dataset normalisation, 384×128 input.
    RefineOptions = MARRefineOptions
    model_defaults = {"pooling": "avg", "neck": "none", "last_stride": 2, "last_relu": False,
                      "input_norm": "dataset", "height": 384, "width": 128}
    #: 20 epochs, evaluated once, after the last (main.py: no model selection).
    run_defaults = RunDefaults(epochs=20, eval_every=20)

    @classmethod
    def refine(cls, features: Any, labels: np.ndarray, extra: Mapping[str, Any], options: Mapping[str, Any],
               *, seed: int = 1) -> Refined:
        """Soft multilabels and agreement pairs of a features file, for inspection (no labels)."""
        return refine_mar(features, resolve(MARRefineOptions, options, what="`refine --method mar`"))

    def __init__(self, params: MARParams | None = None) -> None:
        super().__init__(params)
        self._source: SourceData | None = None
        self.memory: torch.Tensor | None = None  # N×K multilabel memory
        self.visited: torch.Tensor | None = None  # N bool
        self.mu_bar: torch.Tensor | None = None  # K: CML centre of the mean log-multilabel
        self.sigma_bar: torch.Tensor | None = None  # K: of the std
        self.threshold: float | None = None
        self.mined = np.zeros((0, 2), dtype=np.int64)  # the last epoch's positive pairs (target rows)

    @property
    def source(self) -> SourceData:
        if self._source is None:
            p = self.params
            self._source = load_source(p.aux_data, p.aux_dataset, p.aux_splits)
        return self._source

    # ---- optimisation: the agents, SGD and the schedule (AgentTraining)

    def schedule_length(self) -> int:
        return self.params.schedule_epochs

    # ---- the epoch: one pass over the source, the target restarting when exhausted

    def epoch_length(self, data: EpochData) -> int:
        return len(self.source.samples) // (self.params.batch_size // 2)

    def train_stream(self, ctx: StreamContext) -> Iterable[Any]:
        if ctx.world > 1:
            raise ReidctlError("--method mar runs in one process: its memory, centres and pair mining are not yet "
                               "shared between DDP processes (run without torchrun)")
        half = ctx.batch_size // 2
        source = self.source
        if ctx.length < 1:
            raise ReidctlError(f"the source's {len(source.samples)} images cannot fill a source batch of {half}")
        source_norm = ctx.norm_of(source.train or source.samples)
        source_batches = labelled_stream(ctx, source.samples, source.labels, batch_size=half,
                                         transform=mar_transform(ctx.height, ctx.width, source_norm))
        target_batches = labelled_stream(ctx, ctx.samples, ctx.data.labels, batch_size=half, steps=ctx.length,
                                         transform=mar_transform(ctx.height, ctx.width, ctx.norm))
        return zip_streams(source_batches, target_batches)

    def make_state(self, data: EpochData, heads: nn.Module | None) -> MARState:
        assert isinstance(heads, AgentClassifier)
        if self.memory is None:
            self._initialise(data, heads)
        elif len(self.memory) != len(data.labels):
            raise ReidctlError(f"the multilabel memory has {len(self.memory)} rows but the target has "
                               f"{len(data.labels)} train images (another target dataset?)")
        self.memory = self.memory.to(data.device)
        self.visited = self.visited.to(data.device)
        self.mu_bar, self.sigma_bar = self.mu_bar.to(data.device), self.sigma_bar.to(data.device)
        return MARState(epoch=data.epoch)

    @torch.no_grad()
    def _initialise(self, data: EpochData, heads: AgentClassifier) -> None:
        """Centres and threshold from the soft multilabels of every target image (§6.3), an
        empty memory (rows are written on their first visit)."""
        agents = L.normalized_agents(heads.weight.detach().float().cpu())
        ml = L.multilabels_of(data.features, agents, self.params.scale)
        camids = torch.as_tensor(data.camids)
        try:
            self.mu_bar, self.sigma_bar = L.initial_centres(torch.log(ml), camids)
        except ValueError:
            raise ReidctlError("MAR needs camera ids: no camera of the target has two train images") from None
        self.threshold = L.initial_threshold(ml, self.params.mining_ratio)
        self.memory = torch.zeros_like(ml)
        self.visited = torch.zeros(len(ml), dtype=torch.bool)

    # ---- one step

    def training_step(self, inputs: Any, forward: Forward, state: MARState) -> StepResult:
        p = self.params
        source, target = inputs
        out_s, out_t = forward([source.images, target.images])  # per-domain BatchNorm statistics
        weight = out_s["agents"]
        zs = F.normalize(out_s["global"].float(), dim=1)
        zt = F.normalize(out_t["global"].float(), dim=1)
        agents = L.normalized_agents(weight)
        l_al = L.agent_learning_loss(zs, weight, source.labels, p.scale)
        l_rj = L.rejection_loss(zs, source.labels, zt, agents, p.margin)
        ml = L.soft_multilabels(zt, agents, p.scale)
        means, stds = L.camera_moments(torch.log(ml), target.camids)
        self.mu_bar, self.sigma_bar = L.update_centres(self.mu_bar, self.sigma_bar, means, stds, p.centre_rate)
        l_cml = L.cml_loss(means, stds, self.mu_bar, self.sigma_bar)
        loss = p.cml_weight * l_cml + p.agent_weight * (l_al + p.rejection_weight * l_rj)
        logs: dict[str, torch.Tensor | float] = {"al": l_al.detach(), "rj": l_rj.detach(), "cml": l_cml.detach()}
        if state.epoch >= p.mdl_from_epoch:
            l_mdl, mined = self._discriminative(zt, ml, target.index, state)
            loss = loss + l_mdl
            logs |= {"mdl": l_mdl.detach(), **mined}
        return StepResult(loss, logs, None)

    def _discriminative(self, zt: torch.Tensor, ml: torch.Tensor, index: torch.Tensor, state: MARState
                        ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_MDL: the memory takes the batch's multilabels before the loss reads them; the closest
        pairs are split by the current threshold, which then moves towards the batch's quantile."""
        p = self.params
        rows = L.update_memory(self.memory, self.visited, index, ml, p.memory_momentum)
        agreements = L.pair_agreements(rows)
        pairs = L.mine_pairs(zt, rows, self.threshold, p.mining_ratio, agreements)
        if len(agreements):
            t_batch = L.top_agreement(agreements, p.mining_ratio)
            self.threshold = L.update_threshold(self.threshold, t_batch, p.threshold_momentum)
        state.positives.append(index[pairs.positive].detach())
        return L.mdl_loss(zt, pairs), {"positives": float(len(pairs.positive)), "negatives": float(len(pairs.negative)),
                                       "threshold": float(self.threshold)}

    def epoch_summary(self, state: MARState) -> dict[str, Any]:
        """The epoch's end: its mined positive pairs become part of the state saved beside the
        checkpoint (the loop scores them against ground truth)."""
        if state.positives:
            self.mined = torch.cat(state.positives).cpu().numpy().astype(np.int64)
        else:
            self.mined = np.zeros((0, 2), dtype=np.int64)
        return {"threshold": self.threshold, "mined_positive_pairs": int(len(self.mined))}

    # ---- state across epochs

    def persistent_arrays(self) -> dict[str, np.ndarray]:
        if self.memory is None:
            return {}
        return {"memory": self.memory.cpu().numpy(), "visited": self.visited.cpu().numpy(),
                "centre_mean": self.mu_bar.cpu().numpy(), "centre_std": self.sigma_bar.cpu().numpy(),
                "threshold": np.array([self.threshold], dtype=np.float64), "mined_pairs": self.mined}

    def load_persistent_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.memory = torch.as_tensor(np.array(arrays["memory"], dtype=np.float32))
        self.visited = torch.as_tensor(np.array(arrays["visited"], dtype=bool))
        self.mu_bar = torch.as_tensor(np.array(arrays["centre_mean"]))
        self.sigma_bar = torch.as_tensor(np.array(arrays["centre_std"]))
        self.threshold = float(np.asarray(arrays["threshold"])[0])
        self.mined = np.array(arrays["mined_pairs"], dtype=np.int64)
