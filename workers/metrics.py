"""What a measurement means: task metrics against labels, fidelity to the original's outputs, the metric a
quality budget applies to, and the regression gate's arithmetic (losses, objective scores, reasons).
"""

from __future__ import annotations

from typing import Any

import numpy as np

LOWER_IS_BETTER = ("mse", "mae", "max_abs_error")


IMBALANCE_RATIO = 3.0  # largest class ≥ this × the smallest: the budget defaults to macro F1, not accuracy


def task_metrics(outputs: list[np.ndarray], labels: np.ndarray | None) -> dict[str, float]:
    """Against labels: accuracy, top-5 and macro F1 for class ids and [N, classes] outputs; MSE and MAE for
    float targets of the output's size."""
    if labels is None:
        return {}
    metrics = _task_metrics(outputs[0], labels[: len(outputs[0])])
    # NaN or infinite outputs have no score (an argmax over NaN is not a prediction; an MSE would be NaN)
    return {name: None for name in metrics} if nonfinite(outputs) else metrics


def _task_metrics(out: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if labels.dtype.kind in "iu" and out.ndim == 2 and labels.ndim == 1:
        predicted = np.argmax(out, axis=1)
        metrics = {"accuracy": round(float(np.mean(predicted == labels)), 6),
                   "f1_macro": round(f1_macro(labels, predicted), 6)}
        if out.shape[1] > 5:
            top5 = np.argsort(out, axis=1)[:, -5:]
            metrics["top5_accuracy"] = round(float(np.mean(np.any(top5 == labels[:, None], axis=1))), 6)
        return metrics
    if labels.dtype.kind == "f" and labels.size == out.size:
        diff = out.reshape(labels.shape).astype(np.float64) - labels
        return {"mse": float(np.mean(diff ** 2)), "mae": float(np.mean(np.abs(diff)))}
    return {}


def f1_macro(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in the labels (a class never predicted
    correctly scores 0), so a rare class counts as much as a common one."""
    scores = []
    for cls in np.unique(labels):
        true_pos = np.sum((predicted == cls) & (labels == cls))
        scores.append(2 * true_pos / (np.sum(predicted == cls) + np.sum(labels == cls)))
    return float(np.mean(scores))


def imbalanced(labels: np.ndarray | None) -> bool:
    if labels is None or labels.dtype.kind not in "iu" or labels.ndim != 1:
        return False
    counts = np.unique(labels, return_counts=True)[1]
    return len(counts) > 1 and counts.max() >= IMBALANCE_RATIO * counts.min()


def budget_metric(requested: str | None, result: dict[str, Any], labels: np.ndarray | None) -> str:
    """The metric ``max_accuracy_drop`` applies to: the one asked for; else macro F1 for imbalanced class
    labels, accuracy for balanced ones, MSE for float targets; without labels top-1 agreement for
    classifier-like outputs, cosine otherwise (DESIGN.md)."""
    if requested:
        return requested
    if "accuracy" in result:
        return "f1_macro" if imbalanced(labels) else "accuracy"
    if "mse" in result:
        return "mse"
    return "top1_agreement" if result.get("fidelity", {}).get("top1_agreement") is not None else "cosine"


def nonfinite(outputs: list[np.ndarray]) -> int:
    """How many NaN or infinite values the outputs hold."""
    return sum(int(np.count_nonzero(~np.isfinite(o))) for o in outputs if o.dtype.kind in "fc")


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float | None]:
    """How close ``candidate``'s outputs are to ``reference``'s on the same inputs. Where either holds NaN or
    infinity every similarity is null (never a perfect score) and ``nonfinite`` counts those values."""
    for ref, out in zip(reference, candidate, strict=True):
        if ref.shape != out.shape:
            raise ValueError(f"output shapes differ: {ref.shape} vs {out.shape}")
    bad = {"nonfinite": nonfinite(candidate), "nonfinite_reference": nonfinite(reference)}
    if any(bad.values()):
        return {"cosine": None, "cosine_min": None, "max_abs_error": None, "top1_agreement": None, **bad}
    max_abs = 0.0
    for ref, out in zip(reference, candidate, strict=True):
        if ref.size:
            max_abs = max(max_abs, float(np.max(np.abs(ref.astype(np.float64) - out.astype(np.float64)))))
    ref, out = reference[0].astype(np.float64), candidate[0].astype(np.float64)
    rows_ref = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    rows_out = out.reshape(rows_ref.shape)
    norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_out, axis=1)
    cosine = np.sum(rows_ref * rows_out, axis=1) / np.where(norms == 0, 1, norms)
    cosine = np.where(norms == 0, np.all(rows_ref == rows_out, axis=1).astype(float), cosine)
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1)))
    return {"cosine": round(float(np.mean(cosine)), 6), "cosine_min": round(float(np.min(cosine)), 6),
            "max_abs_error": max_abs, "top1_agreement": top1}


def max_relative_error(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest |expected − got| / max(1, |expected|) over all outputs: how a rewrite is checked against its
    source before it is accepted."""
    return max(float(np.max(np.abs(e - g) / np.maximum(1.0, np.abs(e)))) for e, g in zip(expected, got, strict=True))


def metric_value(result: dict[str, Any], metric: str) -> float | None:
    """The result's value of ``metric``: a task metric, or a fidelity one (against the original)."""
    return result.get("fidelity", {}).get(metric, result.get(metric))


def original_value(original: dict[str, Any], result: dict[str, Any], metric: str) -> float | None:
    """The original's value of ``metric``; for fidelity metrics, its perfect agreement with itself."""
    if metric in result.get("fidelity", {}):
        return 0.0 if metric in LOWER_IS_BETTER else 1.0
    return original.get(metric)


def metric_loss(original: dict[str, Any], result: dict[str, Any], metric: str) -> float | None:
    """How much worse than the original the result is on ``metric`` (negative: better)."""
    before, after = original_value(original, result, metric), metric_value(result, metric)
    if before is None or after is None:
        return None
    return round(after - before if metric in LOWER_IS_BETTER else before - after, 6)


def objective_score(original: dict[str, Any], result: dict[str, Any], objective: str) -> float:
    """The result's ``objective`` relative to the original's (below 1: better): bytes, or the geometric mean
    over batch sizes of p50 latency, whatever the runtime."""
    if objective == "size":
        return round(result["size_bytes"] / original["size_bytes"], 4)
    ratios = [stats["p50"] / max(original["latency_ms"][batch]["p50"], 1e-9)
              for batch, stats in result["latency_ms"].items()]
    return round(float(np.exp(np.mean(np.log(ratios)))), 4)


def regressions(original: dict[str, Any], result: dict[str, Any], metric: str, budget: float | None,
                objective: str) -> list[str]:
    """Why the result is worse than the original (DESIGN.md's regression gate): ``metric`` worse by more than
    ``budget`` (higher is better, except for errors); for ``latency``, p50 more than 10% above the original's
    at any batch size on the same runtime; for ``size``, larger."""
    reasons = []
    agreement = result.get("fidelity", {})
    if agreement.get("nonfinite") or agreement.get("nonfinite_reference"):
        whose = "its" if agreement.get("nonfinite") else "the original's"
        count = agreement.get("nonfinite") or agreement.get("nonfinite_reference")
        reasons.append(f"{whose} outputs on the evaluation inputs hold {count} NaN or infinite values: "
                       "quality cannot be judged")
    loss = metric_loss(original, result, metric)
    if budget is not None and loss is not None and loss > budget:
        before = original_value(original, result, metric)
        reasons.append(f"{metric} {'rose' if metric in LOWER_IS_BETTER else 'dropped'} by {loss:.4f} "
                       f"({before:.4f} → {metric_value(result, metric):.4f}), more than the allowed {budget}")
    if objective == "latency" and original["conditions"]["runtime"] == result["conditions"]["runtime"]:
        for batch, stats in result["latency_ms"].items():
            reference = original["latency_ms"][batch]["p50"]
            if stats["p50"] > 1.1 * reference:
                reasons.append(f"p50 latency at batch {batch} is {stats['p50']:.3f} ms, more than 10% above the "
                               f"original's {reference:.3f} ms")
    if objective == "size" and result["size_bytes"] > original["size_bytes"]:
        reasons.append(f"{result['size_bytes']} bytes, larger than the original's {original['size_bytes']}")
    return reasons
