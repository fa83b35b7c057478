"""Plugin script: registers trtq's `tensorrt.plugin` definitions when run or imported (TensorRT >= 10.16).

For tools that load Python plugins by file path, e.g.
``trtq build model.plugins.onnx -o model.engine --plugins "$(python -m trtq.plugins.qdp_register --path)"``.
In your own code call `trtq.plugins.trt_plugin.register()` instead.
"""

import sys
from pathlib import Path

if __name__ == "__main__" and sys.argv[1:] == ["--path"]:
    print(Path(__file__).resolve())
else:
    from trtq.plugins.trt_plugin import register

    register()
