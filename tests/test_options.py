"""Options are declared once, on the dataclasses holding their defaults, and every command that
takes an option builds its flag from that one declaration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from reidctl.cli.method_options import (Flag, default_text, loop_flags, model_flags, prelude_flags, refine_flags,
                                        train_flags, with_options)
from reidctl.cli.options import Runtime
from reidctl.cluster.clustering import ClusterParams
from reidctl.errors import ReidctlError
from reidctl.methods import METHODS, MARParams
from reidctl.methods.icrefine.prelude import INTRA_CAMERA
from reidctl.methods.mar.method import MARSource
from reidctl.methods.ncplr.method import GLNCPLRParams, NCPLRParams
from reidctl.models.spec import ModelSpec
from reidctl.options import option, option_fields, resolve
from tests.clitools import run_error

#: Fields that are set by a command itself, not options of their own.
NOT_OPTIONS = {ClusterParams: {"device"}, ModelSpec: {"checkpoint", "seed"},
               # inherited, marked unused: MAR's epoch is one pass over its source, shuffled
               MARParams: {"iters", "num_instances", "step_size", "sampler_anchor",
                           # set by the plan from the source section (MARSource), which MAR trains on itself
                           "aux_data", "aux_dataset", "aux_splits"},
               # inherited, marked unused: MAR's own batch halves and weights replace the joint step's
               MARSource: {"aux_weight", "aux_batch", "aux_scale"},
               # set by the plan from NCPLR's switch (NCPLRSwitches), not an option of the training
               NCPLRParams: {"global_local"}, GLNCPLRParams: {"global_local"},
               # inherited, marked unused: stage 1 trains one camera at a time, with no cross-camera positive
               INTRA_CAMERA.Options: {"camera_proxies", "cam_lambda", "cam_temperature", "cam_hard_negatives"}}


def _declared(cls) -> set[str]:
    return {name for name, _, _ in option_fields(cls)}


@pytest.mark.parametrize("cls", [ClusterParams, ModelSpec, Runtime, INTRA_CAMERA.Options]
                         + [m.Params for m in METHODS.values()] + [m.RefineOptions for m in METHODS.values()]
                         + list(dict.fromkeys(m.Switches for m in METHODS.values()))
                         + list(dict.fromkeys(m.Source for m in METHODS.values())))
def test_every_field_is_an_option_with_help(cls):
    fields = {f.name for f in dataclasses.fields(cls)} - NOT_OPTIONS.get(cls, set())
    assert _declared(cls) == fields
    assert all(info.help.endswith((".", ")")) for _, _, info in option_fields(cls))


def test_a_subclass_changes_a_default_and_keeps_the_help():
    iters = {f.key: f for f in train_flags()}["iters"]
    assert iters.help() == "Iterations per epoch (MSMT17: cc 400). (cc 200, pplr 400, icrefine 200, ncplr 200, gl-ncplr 200)"
    eps = {f.key: f for f in loop_flags()}["eps"]
    assert eps.help().endswith("(cc 0.6, pplr 0.5, icrefine 0.5, ncplr 0.5, gl-ncplr 0.5)")


def test_one_declaration_serves_every_command():
    for key in ("iters", "batch_size", "lr"):
        helps = {flags[key].help() for flags in ({f.key: f for f in train_flags()}, {f.key: f for f in loop_flags()})}
        assert len(helps) == 1, key
    loop = {f.key: f for f in loop_flags()}
    alone = {f.key: f for f in prelude_flags(INTRA_CAMERA)}
    assert loop["intra_iters"].info is alone["iters"].info  # `loop --intra-iters` is `intra-camera --iters`
    assert loop["intra_iters"].flags() == ("--intra-iters",) and alone["iters"].flags() == ("--iters",)
    assert "epoch" not in loop and "intra" in loop  # the loop sets the epoch; --intra FILE replaces stage 1
    assert {"epoch", "epochs", "intra", "k", "decay"} <= {f.key for f in refine_flags()}
    assert {f.key for f in model_flags(by_method=True)} == {f.key for f in model_flags()}
    pooling = {f.key: f for f in model_flags(by_method=True)}["pooling"]
    assert pooling.help().endswith("(cc gem, pplr avg, icrefine gem, ncplr gem, gl-ncplr gem, mar avg)")


def test_booleans_are_switch_pairs_and_aliases_are_kept():
    flags = {f.key: f for f in loop_flags()}
    assert flags["pglr"].flags() == ("--pglr/--no-pglr",)
    assert flags["camera_proxies"].flags() == ("--camera-proxies/--no-camera-proxies",)
    assert flags["algo"].flags() == ("--algo", "--global-clustering")


def test_default_text():
    assert default_text({"cc": 1, "pplr": 1}) == "(1)"
    assert default_text({"cc": 1, "pplr": 2}) == "(cc 1, pplr 2)"
    assert default_text({"cc": None, "pplr": 2}) == "(pplr 2)"
    assert default_text({"": True}) == "(on)"


def test_cli_routes_switches_by_name(tmp_path):
    run_error("train-epoch", "--data", "synthetic:tiny", "--out", tmp_path / "m.pt", "--labels", tmp_path / "x.h5",
              "--method", "cc", "--no-pglr", match=r"--pglr does not apply to --method cc \(an option of pplr\)")
    run_error("loop", "--data", "synthetic:tiny", "--run-dir", tmp_path / "r", "--method", "pplr",
              "--intra-iters", "3", match=r"--intra-iters does not apply to --method pplr \(an option of icrefine\)")


@dataclass
class _Opts:
    a: int = field(default=1, metadata=option("A number."))
    b: str = "x"

    def check(self) -> None:
        if self.a < 0:
            raise ReidctlError("--a must not be negative")


def test_resolve_fills_defaults_checks_and_names_foreign_options():
    assert resolve(_Opts, {"a": None}, what="x") == _Opts()
    assert resolve(_Opts, {"a": 3}, what="x", base={"a": 2, "zz": 1}) == _Opts(a=3)
    assert _declared(_Opts) == {"a"}
    with pytest.raises(ReidctlError, match=r"^--a must not be negative$"):
        resolve(_Opts, {"a": -1}, what="x")
    with pytest.raises(ReidctlError, match=r"^--c, --d-e do not apply to `thing`$"):
        resolve(_Opts, {"c": 1, "d_e": 2}, what="`thing`")


def test_an_option_that_clashes_with_a_command_parameter_is_a_developer_error():
    def cmd(a: int = 0, options: dict | None = None) -> None:
        pass

    clash = Flag("a", int, option("A number.")["reidctl.option"], "a")
    with pytest.raises(TypeError, match=r"cmd: options \['a'\] clash"):
        with_options(options=[clash])(cmd)


def test_an_inherited_option_a_method_marks_unused_is_refused_on_every_path():
    """MAR's epoch is one pass over its source: ``iters`` is no option of it, whether given on the
    command line (routed by the plan) or to the library's ``resolve_params``."""
    from reidctl.methods import get_method

    mar = get_method("mar")
    with pytest.raises(ReidctlError, match=r"^--iters does not apply to --method mar"):
        mar.resolve_params(None, {"iters": 5})
    with pytest.raises(ReidctlError, match=r"^--iters does not apply to --method mar \(an option of cc"):
        mar.plan({"iters": 5}, stage="train")
    assert mar.resolve_params({"iters": 5}, {}).iters == MARParams().iters  # a checkpoint's value is ignored
