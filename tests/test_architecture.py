"""Import rules of DESIGN.md and STYLE.md, checked by import-linter and by a real API process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_process_loads_no_ml_runtime():
    code = ("import sys; from app.main import create_app; create_app(); "
            "heavy = sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'openvino', 'tensorrt') if m in sys.modules); "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
