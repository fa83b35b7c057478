"""Tests of trtq.targets: the tables are consistent with each other and answer what check/build ask."""

from __future__ import annotations

import pytest

from trtq.config import QuantConfig, Target
from trtq.errors import TrtqError
from trtq.targets import JETPACKS, TARGETS, TRT_RELEASES, TRT_VERSIONS, trt_at_least, trt_support


def test_tables_are_consistent() -> None:
    assert set(TRT_RELEASES) == set(TRT_VERSIONS)
    for name, spec in TARGETS.items():
        assert spec.default_trt in TRT_VERSIONS
        assert trt_support(name, spec.default_trt) == ("ok", ""), name
        assert set(spec.dla_precisions) <= set(spec.precisions) and spec.dla == bool(spec.dla_precisions)
    for row in JETPACKS:
        assert row.targets and set(row.targets) <= {n for n, s in TARGETS.items() if s.jetson}
        assert set(row.limited) <= set(row.targets) and bool(row.limited) == bool(row.caveat)


@pytest.mark.parametrize(
    "target, trt, support",
    [("orin", "10.3", "ok"), ("orin", "10.16", "ok"), ("orin", "11", "partial"), ("thor", "10.3", "none"),
     ("thor", "11", "ok"), ("hopper", "10.3", "ok")],
)
def test_trt_support_follows_jetpack(target: str, trt: str, support: str) -> None:
    assert trt_support(target, trt)[0] == support


def test_precisions_per_target() -> None:
    assert not TARGETS["orin"].runs("fp8") and TARGETS["thor"].runs("fp4") and TARGETS["ada"].runs("fp8")
    assert not TARGETS["hopper"].runs("fp4") and all(s.runs("bf16") and s.runs("int4") for s in TARGETS.values())
    assert {s.default_high_precision for s in TARGETS.values()} == {"fp16"}
    with pytest.raises(TrtqError, match="FP8 cannot run on target 'orin'"):
        QuantConfig(precision="fp8", target=Target("orin"))


def test_strong_typing_and_versions() -> None:
    assert TRT_RELEASES["11"].strongly_typed == "always" and not TRT_RELEASES["11"].implicit_int8
    assert {TRT_RELEASES[v].strongly_typed for v in ("10.3", "10.16")} == {"flag"}
    assert trt_at_least("10.16", "10.13") and not trt_at_least("10.3", "10.13") and trt_at_least("11", "10.16")
    assert trt_at_least(None, "11")
