#!/usr/bin/env bash
# Create the peers' virtual environments for bench/run.py (idempotent: a venv whose
# packages already import is left alone; a broken one is rebuilt).
#
#   bench/.venvs/ort       onnxruntime.quantization (onnxruntime + onnx + numpy)
#   bench/.venvs/modelopt  nvidia-modelopt[onnx] (pins onnx 1.21, brings onnxruntime-gpu,
#                          which cannot share an environment with onnxruntime)
#
# Environment: PYTHON (interpreter for the venvs, default python3),
#              ORT_VERSION, ONNX_VERSION, MODELOPT_VERSION, TORCH_SPEC (see defaults below).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$HERE/.venvs"
PYTHON="${PYTHON:-python3}"
ORT_VERSION="${ORT_VERSION:-1.32.0}"
ONNX_VERSION="${ONNX_VERSION:-1.23.2}"
MODELOPT_VERSION="${MODELOPT_VERSION:-0.47.0}"
# modelopt requires torch; the CPU build avoids ~4 GB of CUDA wheels. Falls back to plain torch.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"

mkdir -p "$VENVS"

ready() {  # ready VENV PYTHON_CODE
    [ -x "$1/bin/python" ] && "$1/bin/python" -c "$2" >/dev/null 2>&1
}

make_venv() {
    rm -rf "$1"
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --upgrade pip
}

ORT="$VENVS/ort"
if ready "$ORT" "import onnxruntime.quantization, onnx, numpy"; then
    echo "ort venv ready: $ORT"
else
    echo "creating $ORT"
    make_venv "$ORT"
    "$ORT/bin/pip" install --quiet "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" numpy
fi

MO="$VENVS/modelopt"
if ready "$MO" "import modelopt.onnx.quantization, onnxruntime"; then
    echo "modelopt venv ready: $MO"
else
    echo "creating $MO (several minutes)"
    make_venv "$MO"
    "$MO/bin/pip" install --quiet "$TORCH_SPEC" || "$MO/bin/pip" install --quiet torch
    "$MO/bin/pip" install --quiet "nvidia-modelopt[onnx]==$MODELOPT_VERSION"
fi

"$ORT/bin/python" -c "import onnxruntime as o, onnx; print('ort:', o.__version__, 'onnx', onnx.__version__)"
"$MO/bin/python" -c "import modelopt, onnxruntime as o, onnx; print('modelopt:', modelopt.__version__, 'onnxruntime', o.__version__, o.get_available_providers(), 'onnx', onnx.__version__)"
