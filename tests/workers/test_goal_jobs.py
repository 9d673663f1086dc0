"""Goal jobs: the service searches candidate recipes for the best one within an accuracy budget."""

from __future__ import annotations

import itertools

from tests.workers.jobs import run_job, upload_model
from tests.workers.test_runner import run, set_job


def goal_payload(model_id: str, datasets: dict, **goal) -> dict:
    return {"model_id": model_id, "datasets": datasets,
            "goal": {"max_accuracy_drop": 0.01, "objective": "size", **goal}}


def measured(job: dict) -> list[dict]:
    return [c for c in job["metrics"]["candidates"] if c["status"] == "measured"]


def test_goal_finds_a_smaller_model_within_one_accuracy_point(client, trained_cnn_onnx, digits_sets):
    payload = goal_payload(upload_model(client, trained_cnn_onnx), digits_sets)
    plan = client.post("/v1/jobs?dry_run=true", json=payload).json()
    groups = [c["group"] for c in plan["goal"]["candidates"]]
    assert groups[:2] == ["int8-static", "int8-static"] and "fp16" in groups and "low-rank" in groups
    assert plan["evaluation"]["max_accuracy_drop"] == 0.01 and plan["target"]["objective"] == "size"
    assert {s["candidate"] for s in plan["steps"]} == set(range(1, len(groups) + 1))

    job = run_job(client, payload)
    original, goal = job["metrics"]["original"], job["metrics"]["goal"]
    assert goal["met"] is True and job["regressed"] is False and len(measured(job)) >= 3
    best = next(c for c in job["metrics"]["candidates"] if c["candidate"] == goal["best"])
    assert best["meets_goal"] and best["loss"] <= 0.01 and best["size_bytes"] < original["size_bytes"]
    assert best["score"] == min(c["score"] for c in measured(job) if c["meets_goal"])
    assert job["metrics"]["result"]["accuracy"] >= original["accuracy"] - 0.01
    assert job["metrics"]["result"]["size_bytes"] == best["size_bytes"] < 0.4 * original["size_bytes"]
    # a group's milder levels are skipped once one level met the goal (percentile after minmax static int8); the
    # low-rank ladder starts in the middle (50%), and goes to 25% only if 50% met the goal
    skipped = [c for c in job["metrics"]["candidates"] if c["status"] == "skipped"]
    assert any(c["reason"] == "a more aggressive level of int8-static already met the goal" for c in skipped)
    assert all(s["status"] == "skipped" for s in job["steps"] if s["candidate"] in {c["candidate"] for c in skipped})
    # then the best structural candidate that met the goal stacked with the best other one
    stacked = job["metrics"]["candidates"][-1]
    assert stacked["group"] == "stacked" and stacked["status"] == "measured"
    assert stacked["steps"][0] == "lowrank.svd" and len(stacked["steps"]) == 2
    assert [s["pass"] for s in job["steps"] if s["candidate"] == stacked["candidate"]] == stacked["steps"]
    # one artifact per measured candidate, the best's among them, and it downloads
    assert sorted(a["id"] for a in job["artifacts"]) == sorted(c["artifact_id"] for c in measured(job))
    assert client.get(f"/v1/artifacts/{goal['artifact_id']}/download").status_code == 200

    again = run_job(client, payload)  # the same search again: a cache hit, its artifacts under new ids
    kept = {a["id"] for a in again["artifacts"]}
    assert again["cache_hit"] and again["metrics"]["goal"]["artifact_id"] in kept
    assert {c["artifact_id"] for c in measured(again)} == kept and not kept & {a["id"] for a in job["artifacts"]}


def test_an_impossible_budget_returns_the_closest_flagged(client, trained_cnn_onnx, digits_sets):
    payload = {**goal_payload(upload_model(client, trained_cnn_onnx), digits_sets, max_accuracy_drop=0.0),
               "evaluation": {"metric": "max_abs_error"}}  # every candidate changes the outputs
    job = run_job(client, payload)
    goal, candidates = job["metrics"]["goal"], measured(job)
    assert goal["met"] is False and job["regressed"] is True and len(candidates) >= 3
    assert job["regressions"][0].startswith(f"no candidate met the goal; candidate {goal['best']}")
    closest = min(candidates, key=lambda c: (c["loss"], c["score"]))
    assert goal["best"] == closest["candidate"] and job["metrics"]["result"]["size_bytes"] == closest["size_bytes"]
    assert all(c["loss"] > 0 and not c["meets_goal"] for c in candidates)


def test_the_time_budget_stops_the_search_after_the_first_candidate(client, trained_cnn_onnx, digits_sets,
                                                                     monkeypatch):
    import workers.runner

    clock = itertools.count(0, 1000.0)  # every reading of the clock is 1000 s later
    monkeypatch.setattr(workers.runner, "search_clock", lambda: next(clock))
    job = run_job(client, goal_payload(upload_model(client, trained_cnn_onnx), digits_sets, time_budget_s=60))
    first, *rest = job["metrics"]["candidates"]
    assert first["status"] == "measured" and job["metrics"]["goal"]["best"] == 1
    assert rest and all(c["status"] == "skipped" for c in rest)
    assert all(c["reason"] == "the time budget was spent" for c in rest if c["group"] != first["group"])


def test_a_cancelled_search_keeps_what_it_found(client, trained_cnn_onnx, digits_sets, monkeypatch):
    from workers.runner import JobRun

    keep = JobRun._discard_artifacts

    def cancel_after_first_candidate(self, **kwargs):
        keep(self, **kwargs)
        set_job(self.job_id, cancel_requested=True)

    monkeypatch.setattr(JobRun, "_discard_artifacts", cancel_after_first_candidate)
    response = client.post("/v1/jobs", json=goal_payload(upload_model(client, trained_cnn_onnx), digits_sets))
    run(response.json()["id"])
    job = client.get(f"/v1/jobs/{response.json()['id']}").json()
    assert job["state"] == "cancelled" and job["metrics"]["goal"]["best"] == 1
    [artifact] = job["artifacts"]
    assert artifact["id"] == job["metrics"]["goal"]["artifact_id"] == job["metrics"]["candidates"][0]["artifact_id"]
    assert {s["status"] for s in job["steps"] if s["candidate"] > 2} == {"cancelled"}


def test_goal_requests_are_checked(client, uploaded_model):
    model_id = uploaded_model["id"]

    def problem(payload: dict) -> str:
        response = client.post("/v1/jobs?dry_run=true", json={"model_id": model_id, **payload})
        assert response.status_code == 422, response.text
        return response.text

    goal = {"max_accuracy_drop": 0.01}
    assert "exactly one of steps, preset or goal" in problem({"goal": goal, "preset": "cpu-int8"})
    assert "goal.objective" in problem({"goal": {**goal, "objective": "size"}, "target": {"objective": "latency"}})
    assert "time_budget_s" in problem({"goal": {**goal, "time_budget_s": 1}})
    assert "max_accuracy_drop" in problem({"goal": {"objective": "size"}})
    plan = client.post("/v1/jobs?dry_run=true", json={"model_id": model_id, "goal": goal}).json()
    groups = [c["group"] for c in plan["goal"]["candidates"]]
    assert groups[0] == "graph-optimization" and "int8-static" not in groups  # no calibration data, no static int8
    assert plan["goal"]["time_budget_s"] == 600 and plan["target"]["objective"] == "latency"


def test_a_goal_leaves_out_what_this_deployment_cannot_build(client, uploaded_model):
    from workers.passes import REGISTRY

    plan = client.post("/v1/jobs?dry_run=true", json={"model_id": uploaded_model["id"], "target": {"device": "cuda"},
                                                      "goal": {"max_accuracy_drop": 0.01}}).json()
    groups = {c["group"] for c in plan["goal"]["candidates"]}
    assert plan["queue"] == "gpu" and "fp16" in groups
    reason = REGISTRY["engine.tensorrt"].unavailable_reason()
    excluded = {e["group"]: e["reason"] for e in plan["goal"]["excluded"]}
    if reason:  # this machine has no TensorRT: the engine is left out, saying why
        assert "tensorrt" not in groups and reason in excluded["tensorrt"]
    else:
        assert "tensorrt" in groups
