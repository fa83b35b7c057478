"""What each device family and TensorRT release can do, as data: the one table `check`, `quantize` and `build` read.

Three tables, each row citing its source in a comment ("anchors" = shared/reference/anchors-trt-modelopt.md):

- `TRT_RELEASES`: per TensorRT version trtq checks and builds for (`TRT_VERSIONS`), the ONNX parser's opset
  range, whether strong typing is a flag (10.x) or the only mode (11), whether implicit INT8 calibration
  (the legacy calibration cache) still exists, and whether DLA builds exist.
- `JETPACKS`: per JetPack release, the Jetson Linux (L4T) and CUDA versions, the TensorRT it ships and the
  Jetson targets it runs on, with the caveat when only some devices of a target are covered.
- `TARGETS`: per device family, the compute capability (SM), the precisions TensorRT runs there (quantized
  ones: int8 fp8 int4 fp4; floating point ones: fp32 fp16 bf16), the default high precision for the
  layers left unquantized, DLA, the TensorRT versions that exist for it and the default one.

Everything here is static knowledge; nothing imports TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FLOAT_PRECISIONS",
    "JETPACKS",
    "QUANT_PRECISIONS",
    "TARGETS",
    "TRT_RELEASES",
    "TRT_VERSIONS",
    "JetPack",
    "TargetSpec",
    "TrtRelease",
    "trt_at_least",
    "trt_support",
]

QUANT_PRECISIONS = ("int8", "fp8", "int4", "fp4")
FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TrtRelease:
    """What one TensorRT version does that trtq's graphs depend on.

    Args:
        version: the version as trtq names it ('10.3', '10.16', '11').
        parser_opsets: the ONNX parser's inclusive (lowest, highest) opset.
        strongly_typed: 'flag' (NetworkDefinitionCreationFlag.STRONGLY_TYPED / trtexec --stronglyTyped, opt-in)
            or 'always' (the only mode: every tensor keeps the ONNX type).
        implicit_int8: implicit INT8 (builder flag INT8 + calibrator or calibration cache) still exists.
        dla: DLA engines can be built (on the devices that have a DLA).
        int4_even: what the ONNX parser requires of an INT4 (4-bit) Q/DQ tensor: 'last-dim' (an even last
            dimension) or 'elements' (an even element count).
    """

    version: str
    parser_opsets: tuple[int, int]
    strongly_typed: str
    implicit_int8: bool
    dla: bool
    int4_even: str = "elements"


# The versions trtq checks and builds for: the three whose Python bindings trtq's API tests read.
TRT_VERSIONS = ("10.3", "10.16", "11")

TRT_RELEASES: dict[str, TrtRelease] = {
    # onnx-tensorrt docs/operators.md at 10.x: "inclusive range of opset 9 to opset 20" (10.0-10.3);
    # strong typing opt-in, present in 10.3.0 (anchors §2.2); implicit quantization deprecated in 10.1,
    # removed in 11.0 (anchors §5 item 7); DLA until 10.7 ("TensorRT 10.7 was the last release that
    # supported DLA", TensorRT 11.4.1 Jetson migration page, anchors §4).
    # INT4: onnx-tensorrt 10.1 onnxOpImporters.cpp QDQ importer: "INT4 requires an even last-dimension due to
    # packing restrictions" ("Quantization to INT4 is not supported for tensors with an odd last dimension");
    # taken as 10.3's rule (the conservative reading: the element-count check arrived with FP4, 10.8).
    "10.3": TrtRelease("10.3", (9, 20), "flag", True, True, "last-dim"),
    # operators.md at 10.15: "inclusive range of opset 9 to opset 24"; no DLA after 10.7 (anchors §4).
    # INT4/FP4: the newer importer checks volume(inputDims) % 2 == 0 ("4-bit quantization requies an even
    # number of elements", onnx-tensorrt onnxOpImporters.cpp with kFP4, i.e. >= 10.8).
    "10.16": TrtRelease("10.16", (9, 24), "flag", True, False, "elements"),
    # TensorRT 11: kSTRONGLY_TYPED "Deprecated in TensorRT 11.0. Strongly typed mode is always enabled."
    # (NvInfer.h, anchors §2.2); the 11.x parser takes opsets up to 25 (issue 11's read of the parser);
    # DLA restored in 11.4.1 on AGX Orin with JetPack 7.2.2+ only (anchors §4).
    "11": TrtRelease("11", (9, 25), "always", False, True, "elements"),
}


@dataclass(frozen=True)
class JetPack:
    """One JetPack release: what a Jetson runs when it is flashed with it.

    Args:
        version: the JetPack version ('6.2', '7.2', ...).
        l4t: the Jetson Linux (L4T) release.
        cuda: the CUDA version.
        trt: the TensorRT version it ships (as trtq names it when in `TRT_VERSIONS`, else the full one).
        targets: the Jetson targets it runs on.
        limited: the targets of which the row covers only some devices (the caveat says which).
        caveat: what the row does not cover on the `limited` targets.
    """

    version: str
    l4t: str
    cuda: str
    trt: str
    targets: tuple[str, ...]
    limited: tuple[str, ...] = ()
    caveat: str = ""


JETPACKS: tuple[JetPack, ...] = (
    # Torch-TensorRT JetPack page; NVIDIA/TensorRT#4494 "on Jetson Orin (so I am locked to TRT 10.3 and Cuda 12.6)"
    JetPack("6.1", "36.4", "12.6", "10.3", ("orin",)),
    JetPack("6.2", "36.4.3", "12.6", "10.3", ("orin",)),  # adds the Orin Nano / NX "Super" power modes
    # developer.nvidia.com/embedded/jetpack/downloads/archive-7.0; TensorRT 10.13.3.9 per NVIDIA/TensorRT#4590
    JetPack("7.0", "38.2", "13.0", "10.13", ("thor",)),
    # developer.nvidia.com/embedded/jetpack/downloads/archive-7.1 (TensorRT 10.13.x, to verify)
    JetPack("7.1", "38.4", "13.0", "10.13", ("thor",)),
    # OE4T/meta-tegra PR #2224: "Both Orin and Thor... CUDA 13.2, cuDNN 9.20, TensorRT 10.16"
    JetPack("7.2", "39.2", "13.2", "10.16", ("orin", "thor")),
    # TensorRT 11.4.1 Jetson migration page: "TensorRT 11.4.1 supports NVIDIA JetPack 7.2.2 or later on
    # Jetson AGX Orin and Jetson Thor"; "Jetson Orin on NVIDIA JetPack 6.x is not supported"
    JetPack("7.2.2", "39.2", "13.2", "11", ("orin", "thor"), ("orin",),
            "TensorRT 11 (11.4.1+) on Jetson AGX Orin only, not Orin NX / Nano"),
)


@dataclass(frozen=True)
class TargetSpec:
    """What a device family runs.

    Args:
        sm: CUDA compute capability.
        precisions: the quantized and floating point precisions TensorRT runs there.
        default_trt: the TensorRT version `check` and `build` assume when none is given.
        note: the devices.
        jetson: a Jetson module (TensorRT comes with JetPack: `JETPACKS` says which versions exist).
        dla: the target has a DLA (on the TensorRT versions whose `TrtRelease.dla` is True).
        dla_precisions: what the DLA runs.
    """

    sm: str
    precisions: tuple[str, ...]
    default_trt: str
    note: str = ""
    jetson: bool = False
    dla: bool = False
    dla_precisions: tuple[str, ...] = ()

    def runs(self, precision: str) -> bool:
        """True when TensorRT runs `precision` ('int8', 'fp8', 'bf16', ...) on this target."""
        return precision in self.precisions

    @property
    def default_high_precision(self) -> str:
        """The precision of the layers left unquantized by default: fp16 where it runs (everywhere TensorRT 10+
        runs)."""
        return "fp16" if self.runs("fp16") else "fp32"


_AMPERE = ("fp32", "fp16", "bf16", "int8", "int4")  # BF16 needs SM >= 8.0; INT4 weight-only: Ampere+ W4A16
_FP8 = (*_AMPERE, "fp8")  # FP8 needs SM >= 8.9 (anchors §2.1)
_FP4 = (*_FP8, "fp4")  # FP4 needs Blackwell / Thor (anchors §2.1)

TARGETS: dict[str, TargetSpec] = {
    # anchors §4 precision table (TRT support matrix SM 8.7 row: FP16/INT8/Tensor Cores/DLA yes, no FP8;
    # TensorRT-Edge-LLM: "Jetson Orin supports FP16, INT8, and INT4 runtime precisions only"). DLA on
    # AGX Orin / Orin NX, INT8 and FP16 only (anchors §4 DLA; samples/jetson).
    "orin": TargetSpec("8.7", _AMPERE, "10.3", "Jetson Orin (AGX, NX, Nano)", jetson=True, dla=True,
                       dla_precisions=("fp16", "int8")),
    # anchors §4: Thor SM 11.0, FP8 yes, FP4/NVFP4 yes, "Jetson Thor has no DLA". Default: JetPack 7.2.
    "thor": TargetSpec("11.0", _FP4, "10.16", "Jetson Thor (AGX T5000 / T4000)", jetson=True),
    # anchors §2.1 "FP8 needs SM >= 8.9 (Ada, Hopper, Blackwell, Thor); FP4 needs Blackwell/Thor"
    "ampere": TargetSpec("8.0", _AMPERE, "10.16", "A100 / A10 / RTX 30xx (SM 8.0, 8.6)"),
    "ada": TargetSpec("8.9", _FP8, "10.16", "L4 / L40 / RTX 40xx"),
    "hopper": TargetSpec("9.0", _FP8, "10.16", "H100 / H200"),
    "blackwell": TargetSpec("10.0", _FP4, "10.16", "B200 / RTX 50xx (SM 10.0, 12.0)"),
}


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def trt_at_least(version: str | None, minimum: str) -> bool:
    """True when TensorRT `version` is `minimum` or newer ('11' counts as 11.0); None (any version): True."""
    return version is None or _key(version) >= _key(minimum)


def trt_support(target: str, trt: str) -> tuple[str, str]:
    """Whether TensorRT `trt` exists on `target`: ('ok' | 'partial' | 'none', why).

    Desktop and data-center GPUs run every version in `TRT_VERSIONS`. A Jetson runs the TensorRT its
    JetPack ships: 'ok' when a JetPack in `JETPACKS` ships `trt` for the target without caveat,
    'partial' when only with one (the caveat is the reason), 'none' when no JetPack does.
    """
    if not TARGETS[target].jetson:
        return "ok", ""
    rows = [j for j in JETPACKS if j.trt == trt and target in j.targets]
    if any(target not in j.limited for j in rows):
        return "ok", ""
    if rows:
        return "partial", f"JetPack {rows[0].version}: {rows[0].caveat}"
    shipped = sorted({j.trt for j in JETPACKS if target in j.targets and j.trt in TRT_VERSIONS}, key=_key)
    return "none", f"no JetPack ships TensorRT {trt} for {target} (JetPack ships {', '.join(shipped)})"
