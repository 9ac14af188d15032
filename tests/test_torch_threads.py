"""NANONET_TORCH_THREADS caps torch's thread pools in the process that builds the runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import torch
from app.config import Settings
from app.runtime import build_runtime

before = torch.get_num_threads()
build_runtime(Settings(data_dir={data_dir!r}, torch_threads=1))
print(before, torch.get_num_threads(), torch.get_num_interop_threads())
"""


def test_the_setting_caps_intra_and_inter_op_threads(tmp_path: Path) -> None:
    # A fresh interpreter: torch takes the inter-op count only before its first parallel work.
    script = PROBE.format(data_dir=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    before, intra, inter = map(int, out)
    assert (intra, inter) == (1, 1)
    assert before >= 1


def test_a_later_runtime_keeps_the_first_cap(tmp_path: Path) -> None:
    script = PROBE.format(data_dir=str(tmp_path)) + (
        f"build_runtime(Settings(data_dir={str(tmp_path)!r}, torch_threads=2))\n"
        "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out[-1] == "1"
