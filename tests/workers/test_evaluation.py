"""The measuring harness and the regression gate, as pure functions: a controlled clock, known labels."""

from __future__ import annotations

import numpy as np
import pytest

from workers import measure
from workers.measure import Timing, latency
from workers.metrics import budget_metric, fidelity, regressions, task_metrics


class Clock:
    """Time advances only when the measured call runs, by the next of ``durations`` (seconds)."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.calls += 1
        if self.calls > WARMUP:
            self.now += self.durations.pop(0)


WARMUP = 3


def test_percentiles_are_exact_under_a_controlled_clock():
    durations = [ms / 1000 for ms in np.random.default_rng(0).permutation(np.arange(1, 101))]
    clock = Clock(durations)
    stats = latency(clock.run, Timing(warmup=WARMUP, min_iterations=100, min_time_s=0), clock)
    assert stats == {"p50": 50.5, "p95": 95.05, "p99": 99.01, "mean": 50.5, "iterations": 100}
    assert clock.calls == WARMUP + 100


def test_fast_models_are_timed_for_at_least_min_time_and_slow_ones_stop_at_max_time():
    fast = Clock([0.001] * 10_000)  # 1 ms a run: 100 runs take 0.1 s, so keep going until 0.5 s
    assert latency(fast.run, Timing(warmup=WARMUP, min_iterations=100, min_time_s=0.5), fast)["iterations"] == 500
    slow = Clock([2.0] * 100)  # 2 s a run: the 10 s cap stops it after 5 runs, not 100
    stats = latency(slow.run, Timing(warmup=WARMUP, min_iterations=100, min_time_s=1, max_time_s=10), slow)
    assert stats["iterations"] == 5 and stats["p50"] == 2000.0


def test_classifier_metrics_include_top5_and_macro_f1():
    labels = np.array([0] * 8 + [1] * 2)
    logits = np.zeros((10, 7), dtype=np.float32)
    logits[:, 0], logits[:, 1] = 1.0, 0.5  # always predicts class 0: 80% accuracy, class 1 never found
    metrics = task_metrics([logits], labels)
    assert metrics["accuracy"] == 0.8 and metrics["top5_accuracy"] == 1.0
    assert metrics["f1_macro"] == pytest.approx((2 * 8 / (10 + 8) + 0.0) / 2, abs=1e-6)


def test_regression_outputs_get_mse_and_mae():
    metrics = task_metrics([np.array([[1.0], [3.0]], dtype=np.float32)], np.array([[0.0], [1.0]], dtype=np.float32))
    assert metrics == {"mse": 2.5, "mae": 1.5}


def test_the_budget_metric_follows_the_labels():
    balanced, skewed = np.repeat(np.arange(4), 10), np.array([0] * 30 + [1] * 5)
    assert budget_metric(None, {"accuracy": 0.9}, balanced) == "accuracy"
    assert budget_metric(None, {"accuracy": 0.9}, skewed) == "f1_macro"
    assert budget_metric("top5_accuracy", {"accuracy": 0.9}, skewed) == "top5_accuracy"
    assert budget_metric(None, {"mse": 0.1}, np.zeros(3, dtype=np.float32)) == "mse"
    assert budget_metric(None, {"fidelity": {"top1_agreement": 0.99}}, None) == "top1_agreement"
    assert budget_metric(None, {"fidelity": {"top1_agreement": None}}, None) == "cosine"


def metrics(p50, runtime="onnxruntime", size=100, **extra):
    return {"latency_ms": {"1": {"p50": p50}}, "conditions": {"runtime": runtime}, "size_bytes": size,
            "fidelity": {"cosine": 0.999, "top1_agreement": None, "max_abs_error": 0.02}, **extra}


def test_latency_regressions_compare_the_same_runtime_only():
    assert regressions(metrics(1.0), metrics(1.05), "cosine", None, "latency") == []
    assert "more than 10% above" in regressions(metrics(1.0), metrics(1.2), "cosine", None, "latency")[0]
    assert regressions(metrics(1.0, "torch"), metrics(5.0), "cosine", None, "latency") == []
    assert "larger than" in regressions(metrics(1.0), metrics(1.0, size=101), "cosine", None, "size")[0]


def test_accuracy_budgets_know_which_way_is_better():
    before, after = metrics(1.0, accuracy=0.95, mse=0.10), metrics(1.0, accuracy=0.93, mse=0.13)
    assert regressions(before, after, "accuracy", 0.03, "size") == []
    assert regressions(before, after, "accuracy", 0.01, "size")[0].startswith("accuracy dropped by 0.0200")
    assert regressions(before, after, "mse", 0.01, "size")[0].startswith("mse rose by 0.0300")
    assert regressions(before, metrics(1.0, mse=0.05), "mse", 0.0, "size") == []  # lower error is better
    assert regressions(before, after, "max_abs_error", 0.01, "size")[0].startswith("max_abs_error rose by 0.0200")
    assert regressions(before, after, "cosine", 0.01, "size") == []


def test_peak_memory_sees_a_large_allocation_and_not_a_small_one():
    with measure.PeakMemory(cuda=False) as small:
        np.ones(1000)
    with measure.PeakMemory(cuda=False) as large:
        block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
        del block
    assert small.result()["peak_memory_bytes"] < 8 << 20
    assert large.result()["peak_memory_bytes"] >= 60 << 20


def test_nan_outputs_get_no_score_and_fail_the_quality_check():
    reference = [np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], np.float32)]
    broken = [np.array([[np.nan, np.nan, np.nan], [0.8, np.inf, 0.1]], np.float32)]
    agreement = fidelity(reference, broken)
    assert agreement == {"cosine": None, "cosine_min": None, "max_abs_error": None, "top1_agreement": None,
                         "nonfinite": 4, "nonfinite_reference": 0}
    assert task_metrics(broken, np.array([1, 0])) == {"accuracy": None, "f1_macro": None}
    assert task_metrics([np.full((2, 1), np.nan, np.float32)], np.zeros((2, 1), np.float32)) == {"mse": None,
                                                                                                "mae": None}
    result = {**metrics(1.0), "fidelity": agreement}
    for metric in ("top1_agreement", "cosine", "max_abs_error"):
        reasons = regressions(metrics(1.0), result, metric, 0.01, "size")
        assert reasons == ["its outputs on the evaluation inputs hold 4 NaN or infinite values: quality cannot "
                           "be judged"]
    assert fidelity(reference, reference)["top1_agreement"] == 1.0
