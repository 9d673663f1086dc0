"""Goal jobs on the digits CNN and MiniLM-L6: what the search tried, what it chose, and the report's picture.

    pip install -e '.[bench]' && python benchmarks/goal_search.py [--screenshot docs/report-goal.png]

Starts a fresh `tensorpress up` with the default measuring settings (≥100 timed runs and ≥1 s per batch
size) and posts goal jobs: the digits CNN (ONNX, calibration and labelled evaluation sets; batch sizes 1 and
64) within one accuracy point, for size and for latency; MiniLM-L6 (ONNX, batch 1, sequence 128) within a
cosine drop of 0.01, for latency and for size. Prints one markdown table per job; with --screenshot, saves
the digits size job's report as rendered by Debian's Chromium.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import service, upload  # noqa: E402
from benchmarks.minilm import SEQ, export  # noqa: E402
from tests import factories  # noqa: E402


def table(title: str, job: dict, seconds: float) -> str:
    goal, original = job["metrics"]["goal"], job["metrics"]["original"]
    batches = sorted(original["latency_ms"], key=int)
    lines = [f"**{title}** — {job['state']} in {seconds:.0f} s; chosen: candidate {goal['best']} "
             f"({'met the goal' if goal['met'] else 'closest, flagged: ' + '; '.join(job['regressions'])})", "",
             "| # | group | steps | status | size KB | " + " | ".join(f"p50 ms b{b}" for b in batches)
             + f" | {job['metrics']['metric']} | loss | score | notes |",
             "|---|---|---|---|---:|" + "---:|" * len(batches) + "---:|---:|---:|---|",
             "| – | original | | | " + f"{original['size_bytes'] / 1024:.0f} | "
             + " | ".join(f"{original['latency_ms'][b]['p50']:.3f}" for b in batches)
             + f" | {job['metrics']['metric_original']} | | 1 | |"]
    for c in job["metrics"]["candidates"]:
        if c["status"] != "measured":
            lines.append(f"| {c['candidate']} | {c['group']} | {' → '.join(c['steps'])} | {c['status']} | |"
                         + " |" * len(batches) + f" | | | {c['reason'][:90]} |")
            continue
        mark = "**chosen**" if c["candidate"] == goal["best"] else ("; ".join(c["regressions"])[:90] or
                                                                    ("" if c["meets_goal"] else "not better"))
        lines.append(f"| {c['candidate']} | {c['group']} | {' → '.join(c['steps'])} | measured | "
                     f"{c['size_bytes'] / 1024:.0f} | " + " | ".join(f"{c['latency_p50_ms'][b]:.3f}" for b in batches)
                     + f" | {c['value']} | {c['loss']} | {c['score']} | {mark} |")
    return "\n".join(lines)


def screenshot(url: str, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.screenshot(path=str(path), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--screenshot", type=Path, help="save the digits size job's report here (PNG)")
    parser.add_argument("--budget", type=int, default=900, help="time_budget_s of each goal job")
    args = parser.parse_args()
    x_train, _, x_test, y_test = factories.digits()
    with tempfile.TemporaryDirectory() as tmp, service("up", Path(tmp)) as (base, _), \
            httpx.Client(base_url=base, timeout=600) as http:
        def run(title: str, payload: dict) -> dict:
            started = time.perf_counter()
            submitted = http.post("/v1/jobs", json=payload)
            assert submitted.status_code == 202, submitted.text
            with http.stream("GET", f"{submitted.headers['location']}/events") as events:
                for _ in events.iter_lines():
                    pass
            job = http.get(submitted.headers["location"]).json()
            print(table(title, job, time.perf_counter() - started) + "\n", flush=True)
            return job

        digits = {"calibration": upload(http, "/v1/datasets?name=cal", factories.npz_bytes(input=x_train[:256])),
                  "evaluation": upload(http, "/v1/datasets?name=test",
                                       factories.npz_bytes(input=x_test, labels=y_test))}
        cnn = upload(http, "/v1/models?name=digits-cnn.onnx",
                     factories.onnx_from_torch(*factories.digits_cnn(epochs=10)))
        jobs = {objective: run(f"Digits CNN, objective {objective}, max_accuracy_drop 0.01 (accuracy)", {
            "model_id": cnn, "datasets": digits, "target": {"batch_sizes": [1, 64]},
            "goal": {"max_accuracy_drop": 0.01, "objective": objective, "time_budget_s": args.budget}})
            for objective in ("size", "latency")}
        if args.screenshot:
            screenshot(f"{base}/v1/jobs/{jobs['size']['id']}/report", args.screenshot)

        _, model, evaluation, calibration = export(Path(tmp))
        with open(model, "rb") as fh:
            minilm = upload(http, "/v1/models?name=minilm-l6.onnx", fh)
        sets = {"evaluation": upload(http, "/v1/datasets?name=sentences", factories.npz_bytes(**evaluation)),
                "calibration": upload(http, "/v1/datasets?name=other-sentences", factories.npz_bytes(**calibration))}
        target = {"batch_sizes": [1], "inputs": {"input_ids": {"shape": [1, SEQ], "low": 0, "high": 30522},
                                                 "attention_mask": {"shape": [1, SEQ], "low": 1, "high": 2}}}
        for objective in ("latency", "size"):
            run(f"MiniLM-L6, objective {objective}, max_accuracy_drop 0.01 (cosine)", {
                "model_id": minilm, "datasets": sets, "target": target, "evaluation": {"metric": "cosine"},
                "goal": {"max_accuracy_drop": 0.01, "objective": objective, "time_budget_s": args.budget}})


if __name__ == "__main__":
    main()
