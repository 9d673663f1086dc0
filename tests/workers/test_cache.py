"""The content-addressed result cache: a repeated job reuses the first one's artifacts and runs no pass."""

from __future__ import annotations

import pytest

from tests.app.test_jobs_api import submit
from tests.workers.jobs import finished

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def pass_runs(client):
    """How many times quantize.dynamic really ran, over every job so far (each run logs its start)."""
    def count() -> int:
        jobs = client.get("/v1/jobs", params={"limit": 200}).json()["items"]
        return sum(client.get(f"/v1/jobs/{j['id']}/logs").text.count("quantize.dynamic started") for j in jobs)

    return count


def test_a_repeated_job_is_a_cache_hit(client, uploaded_model, pass_runs):
    first = finished(client, submit(client, uploaded_model["id"], target={"batch_sizes": [1, 4]}).json()["id"])
    second = finished(client, submit(client, uploaded_model["id"], target={"batch_sizes": [1, 4]}).json()["id"])
    explicit = [{"pass": "quantize.dynamic", "params": {"per_channel": True, "weight_type": "int8"}}]
    third = submit(client, uploaded_model["id"], explicit, target={"batch_sizes": [1, 4]})
    third = finished(client, third.json()["id"])
    assert pass_runs() == 1 and third["cache_hit"] is True  # defaults spelled out are the same recipe
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert second["metrics"]["cache"] == {"job_id": first["id"]}
    assert second["metrics"]["result"] == first["metrics"]["result"]
    assert second["steps"][0]["started_at"] == first["steps"][0]["started_at"]  # the step record is the first's
    [a], [b] = first["artifacts"], second["artifacts"]
    assert a["id"] != b["id"] and a["sha256"] == b["sha256"] and b["metadata"]["cached_from"] == a["id"]
    assert second["steps"][0]["metrics"]["artifact_id"] == b["id"]
    assert (client.get(f"/v1/artifacts/{b['id']}/download").content
            == client.get(f"/v1/artifacts/{a['id']}/download").content)
    assert "cache hit: job " + first["id"] in client.get(f"/v1/jobs/{second['id']}/logs").text
    assert "step 0 quantize.dynamic started" not in client.get(f"/v1/jobs/{second['id']}/logs").text


def test_anything_that_changes_the_result_misses_the_cache(client, uploaded_model, pass_runs):
    finished(client, submit(client, uploaded_model["id"]).json()["id"])
    per_tensor = [{"pass": "quantize.dynamic", "params": {"per_channel": False}}]
    other_params = submit(client, uploaded_model["id"], per_tensor)
    other_target = submit(client, uploaded_model["id"], target={"batch_sizes": [2]})
    other_budget = submit(client, uploaded_model["id"], evaluation={"max_accuracy_drop": 0.1})
    for response in (other_params, other_target, other_budget):
        assert finished(client, response.json()["id"])["cache_hit"] is False
    assert pass_runs() == 4


def test_the_cache_can_be_turned_off(client, uploaded_model, pass_runs, monkeypatch):
    from app.core.settings import get_settings

    finished(client, submit(client, uploaded_model["id"]).json()["id"])
    monkeypatch.setenv("TENSORPRESS_CACHE", "off")
    get_settings.cache_clear()
    assert finished(client, submit(client, uploaded_model["id"]).json()["id"])["cache_hit"] is False
    assert pass_runs() == 2
