"""One measuring harness for everything in a table: the original, the hand-written baselines and the service's
artifacts run on the same inputs, with the same threads and the same timer, in interleaved rounds.

Latency on this project's shared 2-core machines drifts by tens of percent over minutes (FACTS.md), so a
table measured one entry after the other compares moments, not models. Here every round times every entry
once per batch size, and an entry's p50 is the median over all its rounds: drift hits all of them alike, and
the ratios between rows are what the tables report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

THREADS = 2
Arrays = dict[str, np.ndarray]


@dataclass
class Entry:
    source: str  # "original", "hand-written" or "service"
    label: str
    run: Callable[[Arrays], list[np.ndarray]]
    size: int
    engine: str = "onnxruntime"
    seconds: float | None = None  # time to make it: the script's, or the job's from POST to succeeded
    p50: dict[int, float] = field(default_factory=dict)  # ms by batch size
    quality: dict[str, float] = field(default_factory=dict)
    note: str = ""


def onnx_entry(source: str, label: str, path: Path) -> Entry:
    from workers.runtimes import OnnxRunner, size_and_parameters

    runner = OnnxRunner(path, THREADS)
    return Entry(source, label, runner, size_and_parameters(path, runner)[0])


def artifact_entry(label: str, path: Path, fmt: str, names: list[str]) -> Entry:
    """A service artifact, loaded by the service's own runner for its format (``names``: the model's inputs)."""
    from workers.runtimes import load_runner

    if fmt == "onnx":
        return onnx_entry("service", label, path)
    runner = load_runner(path, fmt, THREADS, [{"name": n} for n in names])
    return Entry("service", label, runner, path.stat().st_size, engine=runner.conditions["runtime"])


def measure(entries: list[Entry], feeds: dict[int, Arrays], rounds: int, budget_s: float) -> None:
    """p50 per batch size for every entry, from ``rounds`` interleaved rounds; each round gives each entry about
    ``budget_s / rounds / len(entries)`` seconds per batch size (at least 3 runs)."""
    for batch, inputs in feeds.items():
        times: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        per_call = {}
        for i, entry in enumerate(entries):
            entry.run(inputs)  # warm up; first call allocates
            started = time.perf_counter()
            entry.run(inputs)
            per_call[i] = max(time.perf_counter() - started, 1e-5)
        slot = budget_s / rounds / len(entries)
        for _ in range(rounds):
            for i, entry in enumerate(entries):
                entry.run(inputs)
                for _ in range(max(3, int(slot / per_call[i]))):
                    started = time.perf_counter()
                    entry.run(inputs)
                    times[i].append(time.perf_counter() - started)
        for i, entry in enumerate(entries):
            entry.p50[batch] = float(np.median(times[i])) * 1e3


def cosine(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    ref, out = reference.reshape(len(reference), -1), output.reshape(len(output), -1).astype(np.float64)
    values = np.sum(ref * out, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    return {"cosine": float(values.mean()), "cosine_min": float(values.min())}


def outputs(entry: Entry, data: Arrays, batch: int = 8) -> np.ndarray:
    samples = len(next(iter(data.values())))
    return np.concatenate([entry.run({k: v[i:i + batch] for k, v in data.items()})[0]
                           for i in range(0, samples, batch)]).astype(np.float64)
