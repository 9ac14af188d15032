#!/usr/bin/env bash
# The CUDA checks, for a person on a GPU host (under 5 minutes; prints its figures):
#   bench/gpu_check.sh
# 1. tests/ml/test_cuda.py: fp32 channels-last CUDA features against torch on the CPU
#    (max abs diff <= 1e-3), and fp16 agreement (cosine >= 0.999, same val labels). fp16 stays
#    off (TorchRunner's `half`) unless its test passes on this GPU.
# 2. Backbone timings on the GPU: images/s of TorchRunner fp32 and fp16 per batch size.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export NANONET_DEVICE=cuda

"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU host"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

echo "== tests/ml/test_cuda.py"
status=0
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -s -rA tests/ml/test_cuda.py || status=$?

echo "== backbone timings (NANONET_DEVICE=cuda)"
timeout 120 "$PY" - <<'PY'
import time

import numpy as np
import torch

from app.config import Settings
from app.ml.backbones import available_backbones, get_network
from app.ml.engines import TorchRunner, make_runner

settings = Settings()
runner = make_runner(settings.torch_device, settings.engines_dir, engine=settings.engine)
print(f"make_runner(device={settings.torch_device!r}) -> {type(runner).__name__}")
for backbone in [b for b in ("mobilenet_v2", "efficientnet_lite0") if b in available_backbones()]:
    size = get_network(backbone).input_size
    for half in (False, True):
        timed = TorchRunner("cuda", half=half)
        for batch_size in (1, 16, 64):
            batch = np.random.default_rng(0).standard_normal(
                (batch_size, 3, size, size)).astype(np.float32)
            for _ in range(3):
                timed.run(backbone, batch)  # warm-up: cuDNN picks its kernels
            runs = 10
            started = time.perf_counter()
            for _ in range(runs):
                timed.run(backbone, batch)
            elapsed = time.perf_counter() - started
            print(f"{backbone:20} {'fp16' if half else 'fp32'} batch {batch_size:3}: "
                  f"{runs * batch_size / elapsed:8.1f} images/s, "
                  f"{1000 * elapsed / runs:7.2f} ms/batch")
print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
PY
echo "== test_cuda.py exit status: $status (0: fp32 and fp16 agree; see the figures above)"
exit $status
