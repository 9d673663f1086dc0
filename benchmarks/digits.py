"""Every pass on the digits models, through the service: size, parameters, latency and accuracy.

    python benchmarks/digits.py

Trains a small CNN and an MLP on scikit-learn's digits (8×8 images), uploads them (ONNX and TorchScript),
and runs one job per recipe on a fresh `tensorpress up`, evaluating on the 360 held-out digits. Prints one
markdown table per model.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import service, upload  # noqa: E402
from tests import factories  # noqa: E402

ONNX_CNN = [
    ("quantize.static (minmax)", [{"pass": "quantize.static"}]),
    ("quantize.dynamic, convolutions too", [{"pass": "quantize.dynamic", "params": {"op_types": ["Conv", "Gemm"]}}]),
    ("prune.magnitude 50% (no fine-tuning)", [{"pass": "prune.magnitude", "params": {"sparsity": 0.5}}]),
    ("lowrank.svd energy 0.95", [{"pass": "lowrank.svd", "params": {"rank_by": "energy", "energy": 0.95}}]),
    ("lowrank.svd ratio 0.5", [{"pass": "lowrank.svd", "params": {"ratio": 0.5}}]),
    ("optimize.onnxruntime (extended)", [{"pass": "optimize.onnxruntime"}]),
]
TORCH_CNN = [
    ("prune.magnitude 50% + train.finetune 3 epochs", [
        {"pass": "prune.magnitude", "params": {"sparsity": 0.5}}, {"pass": "train.finetune", "params": {"epochs": 3}}]),
    ("prune.magnitude 90% + train.finetune 5 epochs", [
        {"pass": "prune.magnitude", "params": {"sparsity": 0.9}}, {"pass": "train.finetune", "params": {"epochs": 5}}]),
    ("train.finetune l1=1e-4, 3 epochs", [{"pass": "train.finetune", "params": {"epochs": 3, "l1": 1e-4}}]),
    ("preset prune-finetune-int8", "prune-finetune-int8"),
]
PT2_CNN = [
    ("prune.structured 30% + train.finetune 5 epochs", [
        {"pass": "prune.structured", "params": {"ratio": 0.3}}, {"pass": "train.finetune", "params": {"epochs": 5}}]),
    ("prune.structured 50% + train.finetune 5 epochs", [
        {"pass": "prune.structured", "params": {"ratio": 0.5}}, {"pass": "train.finetune", "params": {"epochs": 5}}]),
    ("distill.kd width 0.4, α 0.7, T 4, 12 epochs", [{"pass": "distill.kd", "params": {
        "width_ratio": 0.4, "epochs": 12, "patience": 4, "seed": 3}}]),
    ("same student, labels only (α 0)", [{"pass": "distill.kd", "params": {
        "width_ratio": 0.4, "alpha": 0.0, "epochs": 12, "patience": 4, "seed": 3}}]),
    ("distill.kd + feature matching β 0.1", [{"pass": "distill.kd", "params": {
        "width_ratio": 0.4, "epochs": 12, "patience": 4, "seed": 3, "feature_weight": 0.1}}]),
    ("preset distill-int8", "distill-int8"),
    ("export.onnx (unpruned, for comparison)", [{"pass": "export.onnx"}]),
    ("prune.structured 30% + train.finetune + export.onnx", [
        {"pass": "prune.structured", "params": {"ratio": 0.3}}, {"pass": "train.finetune", "params": {"epochs": 5}},
        {"pass": "export.onnx"}]),
]
ONNX_MLP = [
    ("quantize.dynamic", [{"pass": "quantize.dynamic"}]),
    ("quantize.weight_only 4-bit", [{"pass": "quantize.weight_only"}]),
    ("lowrank.svd ratio 0.5", [{"pass": "lowrank.svd", "params": {"ratio": 0.5}}]),
    ("prune.magnitude 70%", [{"pass": "prune.magnitude", "params": {"sparsity": 0.7}}]),
]


def main() -> None:
    x_train, y_train, x_test, y_test = factories.digits()
    cnn, mlp = factories.digits_cnn(epochs=10), factories.digits_mlp(epochs=10)
    tables = []
    with tempfile.TemporaryDirectory() as tmp, service("up", Path(tmp)) as (base, _), \
            httpx.Client(base_url=base, timeout=600) as http:
        data = {"training": upload(http, "/v1/datasets?name=train", factories.npz_bytes(input=x_train, labels=y_train)),
                "calibration": upload(http, "/v1/datasets?name=cal", factories.npz_bytes(input=x_train[:256])),
                "validation": upload(http, "/v1/datasets?name=val", factories.npz_bytes(input=x_train[-200:],
                                                                                  labels=y_train[-200:])),
                "evaluation": upload(http, "/v1/datasets?name=test", factories.npz_bytes(input=x_test, labels=y_test))}
        models = [
            ("digits CNN, ONNX", upload(http, "/v1/models?name=cnn.onnx", factories.onnx_from_torch(*cnn)), ONNX_CNN),
            ("digits CNN, TorchScript", upload(http, f"/v1/models?name=cnn.pt&inputs={factories.CNN_INPUTS}",
                                               factories.torchscript_bytes(*cnn)), TORCH_CNN),
            ("digits CNN, torch.export (.pt2)", upload(http, "/v1/models?name=cnn.pt2", factories.pt2_bytes(*cnn)),
             PT2_CNN),
            ("digits MLP, ONNX", upload(http, "/v1/models?name=mlp.onnx", factories.onnx_from_torch(*mlp)), ONNX_MLP),
        ]
        for title, model_id, recipes in models:
            rows = []
            for label, recipe in recipes:
                payload = {"model_id": model_id, "datasets": data, "target": {"batch_sizes": [1, 64]},
                           **({"preset": recipe} if isinstance(recipe, str) else {"steps": recipe})}
                submitted = http.post("/v1/jobs", json=payload)
                assert submitted.status_code == 202, submitted.text
                while (job := http.get(submitted.headers["location"]).json())["state"] in ("queued", "running"):
                    time.sleep(0.2)
                if job["state"] != "succeeded":
                    rows.append(f"| {label} | failed: {job['error']['detail'][:100]} | | | | |")
                    continue
                if not rows:
                    rows.append(_row("original", job["metrics"]["original"]))
                rows.append(_row(label, job["metrics"]["result"], " → ".join(s["pass"] for s in job["steps"])))
            tables.append((title, rows))
    for title, rows in tables:
        print(f"\n### {title}\n")
        print("| recipe | size KB | parameters (non-zero) | p50 ms b1 / b64 | runtime | accuracy |")
        print("|---|---:|---:|---:|---|---:|")
        print("\n".join(rows))


def _row(label: str, m: dict, steps: str = "") -> str:
    lat = m["latency_ms"]
    nonzero = f" ({m['nonzero_parameters']:,})" if m["nonzero_parameters"] != m["parameters"] else ""
    return (f"| {label}{f' ({steps})' if steps and steps not in label else ''} | {m['size_bytes'] / 1024:.0f} | "
            f"{m['parameters']:,}{nonzero} | {lat['1']['p50']:.3f} / {lat['64']['p50']:.3f} | "
            f"{m['conditions']['runtime']} | {m['accuracy']:.4f} |")


if __name__ == "__main__":
    main()
