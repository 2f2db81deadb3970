"""PPLR's training options, declared once for `train-epoch` and `loop`.

The defaults shown in the help come from :class:`~reidctl.methods.pplr.PPLRParams` (the one
place they live); an option left unset keeps the checkpoint's value, else that default.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from reidctl.methods.pplr import PPLRParams as P

Beta = Annotated[Optional[float], typer.Option(
    "--beta", help=f"pplr: weight of the one-hot label in the PGLR target ({P.beta}).")]
NoPglr = Annotated[bool, typer.Option(
    "--no-pglr", help="pplr ablation: the global classifier learns from the one-hot label (same as --beta 1).")]
NoAals = Annotated[bool, typer.Option(
    "--no-aals",
    help=f"pplr ablation: the parts keep the warm-up label smoothing (ε {P.label_smoothing}) in every epoch.")]
AalsEpoch = Annotated[Optional[int], typer.Option(
    "--aals-epoch", help=f"pplr: first epoch of AALS; label smoothing before ({P.aals_epoch}).")]
AgreementTemperature = Annotated[Optional[float], typer.Option(
    "--agreement-temperature", help=f"pplr: T of the part weights softmax(S/T) in PGLR ({P.agreement_temperature}).")]
ClassifierRows = Annotated[Optional[int], typer.Option(
    "--classifier-rows", help=f"pplr: rows of each classifier = the most clusters allowed ({P.classifier_rows}).")]
CameraProxies = Annotated[bool, typer.Option(
    "--camera-proxies", help="pplr: add the camera-aware proxy loss (train_pplr_cam.py; needs camera ids).")]
CamLambda = Annotated[Optional[float], typer.Option(
    "--cam-lambda", help=f"pplr: weight of the camera proxy loss ({P.cam_lambda}; MSMT17 1.0).")]


def pplr_overrides(*, beta: float | None, no_pglr: bool, no_aals: bool, aals_epoch: int | None,
                   agreement_temperature: float | None, classifier_rows: int | None, camera_proxies: bool,
                   cam_lambda: float | None) -> dict[str, Any]:
    """The given PPLR options as ``Params`` overrides (flags only when set, so that another
    method refuses them by name and a checkpoint's values otherwise carry over)."""
    values = {
        "beta": beta, "pglr": False if no_pglr else None, "aals": False if no_aals else None,
        "aals_epoch": aals_epoch, "agreement_temperature": agreement_temperature,
        "classifier_rows": classifier_rows, "camera_proxies": True if camera_proxies else None,
        "cam_lambda": cam_lambda,
    }
    return {k: v for k, v in values.items() if v is not None}
