"""MAR: soft multilabel learning (Yu et al., CVPR 2019), and the source pretraining it starts from."""

from reidctl.methods.mar.method import MAR, MARParams
from reidctl.methods.mar.pretrain import PretrainParams, PretrainRequest, SourcePretraining, run_pretrain

__all__ = ["MAR", "MARParams", "PretrainParams", "PretrainRequest", "SourcePretraining", "run_pretrain"]
