"""The Python client and the client commands of `tensorpress`, against a live server (jobs run by a worker
thread in this process)."""

from __future__ import annotations

import json
import threading

import pytest

from tests import factories
from tests.integration.test_distributed import wait_for
from tests.workers.test_runner import run

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


@pytest.fixture
def worker(live_url):
    """Runs queued jobs as they come (what a `tensorpress worker` does), until the test ends."""
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models import Job

    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with session_scope() as session:
                queued = list(session.scalars(select(Job.id).where(Job.state == "queued")))
            for job_id in queued:
                run(job_id)
            stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


def test_the_client_uploads_submits_waits_and_downloads(live_url, worker, tmp_path, mlp_bytes):
    from tensorpress import ApiError, Client

    model_file = tmp_path / "mlp.onnx"
    model_file.write_bytes(mlp_bytes)
    seen = []
    with Client(live_url) as client:
        model = client.upload_model(model_file, progress=lambda done, total: seen.append((done, total)))
        assert model.format == "onnx" and seen[-1] == (len(mlp_bytes), len(mlp_bytes))
        job = client.submit_job(model.id, steps=[{"pass": "quantize.dynamic"}], target={"batch_sizes": [1, 4]})
        events = []
        done = client.wait(job.id, timeout=120, on_event=lambda kind, data: events.append(kind))
        assert done.state == "succeeded" and "done" in events and done.result_artifact_id
        path = client.download_artifact(done.result_artifact_id, tmp_path)
        assert path.read_bytes() == client.http.get(f"/v1/artifacts/{done.result_artifact_id}/download").content
        assert client.report(job.id)["job"]["state"] == "succeeded"

        # resume: a partial file is completed with a Range request; a corrupt one is refused and removed
        whole = path.read_bytes()
        path.unlink()
        partial = tmp_path / (path.name + ".part")
        partial.write_bytes(whole[:1000])
        assert client.download_artifact(done.result_artifact_id, path).read_bytes() == whole
        (tmp_path / "again.onnx.part").write_bytes(b"\0" * (len(whole) - 10))
        with pytest.raises(ApiError, match="sha256"):
            client.download_artifact(done.result_artifact_id, tmp_path / "again.onnx")
        assert not (tmp_path / "again.onnx.part").exists() and not (tmp_path / "again.onnx").exists()

        with pytest.raises(ApiError) as problem:
            client.submit_job("missing", steps=[{"pass": "quantize.dynamic"}])
        assert problem.value.status == 422 and problem.value.errors[0]["loc"] == ["model_id"]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from app.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_the_command_line_for_pipelines(live_url, worker, tmp_path, capsys, cnn, monkeypatch):
    monkeypatch.setenv("TENSORPRESS_URL", live_url)
    model_file = tmp_path / "cnn.onnx"
    model_file.write_bytes(factories.onnx_from_torch(*cnn))
    x_train, _, x_test, y_test = factories.digits()
    (tmp_path / "calibration.npz").write_bytes(factories.npz_bytes(input=x_train[:128]))
    (tmp_path / "evaluation.npz").write_bytes(factories.npz_bytes(input=x_test, labels=y_test))
    sets = ["--dataset", f"calibration={tmp_path / 'calibration.npz'}",
            "--dataset", f"evaluation={tmp_path / 'evaluation.npz'}"]

    code, out, err = cli(capsys, "jobs", "submit", str(model_file), "--steps",
                         '[{"pass": "quantize.static"}]', *sets, "--target", '{"objective": "size"}', "--wait",
                         "--json")
    job = json.loads(out)
    assert code == 0 and job["state"] == "succeeded" and "uploading" in err and "state succeeded" in err
    code, out, _ = cli(capsys, "artifacts", "download", job["artifacts"][0]["id"], "-o", str(tmp_path / "q.onnx"))
    assert code == 0 and (tmp_path / "q.onnx").stat().st_size == job["artifacts"][0]["size_bytes"]
    code, out, _ = cli(capsys, "jobs", "status", job["id"])
    ratio = job["metrics"]["result"]["size_bytes"] / job["metrics"]["original"]["size_bytes"]
    assert code == 0 and out.splitlines() == [
        f"job {job['id']}", "state: succeeded", "progress: 100%",
        f"size: {ratio:.3f}x the original ({job['metrics']['original']['size_bytes']:,} -> "
        f"{job['metrics']['result']['size_bytes']:,} bytes)", "regressed: no"]
    assert 0.2 < ratio < 0.5
    assert "step 0 quantize.static succeeded" in cli(capsys, "jobs", "logs", job["id"])[1]
    assert job["id"] in cli(capsys, "jobs", "list", "--state", "succeeded")[1]

    # regressed: exit 3, or 0 when allowed (every output changes, and the budget is zero)
    regress = ["jobs", "submit", job["model_id"], "--steps", '[{"pass": "quantize.static"}]', *sets,
               "--evaluation", '{"metric": "max_abs_error", "max_accuracy_drop": 0}', "--wait"]
    code, out, err = cli(capsys, *regress)
    assert code == 3 and "(regressed)" in out and "regression: max_abs_error rose" in err
    status = cli(capsys, "jobs", "status", out.split()[0])[1].splitlines()
    assert "regressed: yes" in status and any(line.startswith("regression: max_abs_error rose") for line in status)
    assert cli(capsys, *regress, "--allow-regression")[0] == 0
    # HTTP and usage errors: exit 2
    code, _, err = cli(capsys, "jobs", "status", "missing")
    assert code == 2 and "404" in err
    assert cli(capsys, "jobs", "submit", job["model_id"])[0] == 2  # no recipe
    code, _, err = cli(capsys, "jobs", "submit", "missing", "--preset", "cpu-int8")
    assert code == 2 and "model_id: model missing not found" in err
    code, _, err = cli(capsys, "jobs", "submit", job["model_id"], "--preset", "cpu-int8", "--inputs", "[]")
    assert code == 2 and "--inputs describes a model file" in err


def test_jobs_submit_uploads_torchscript_with_its_inputs(live_url, worker, tmp_path, capsys, torchscript,
                                                         monkeypatch):
    monkeypatch.setenv("TENSORPRESS_URL", live_url)
    (tmp_path / "cnn.pt").write_bytes(torchscript)
    steps = ["--steps", '[{"pass": "export.onnx"}]']
    code, _, err = cli(capsys, "jobs", "submit", str(tmp_path / "cnn.pt"), *steps)
    assert code == 2 and "inputs" in err  # TorchScript keeps no shapes: the server asks for them
    inputs = '[{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]'
    code, out, _ = cli(capsys, "jobs", "submit", str(tmp_path / "cnn.pt"), "--inputs", inputs, *steps, "--wait",
                       "--json")
    job = json.loads(out)
    assert code == 0 and job["state"] == "succeeded" and job["artifacts"][0]["format"] == "onnx"
    status = cli(capsys, "jobs", "status", job["id"])[1].splitlines()
    assert status[1] == "state: succeeded" and status[-1] == "regressed: no"


def test_a_cancelled_job_exits_1(live_url, tmp_path, capsys, mlp_bytes, monkeypatch):
    from tensorpress import Client

    monkeypatch.setenv("TENSORPRESS_URL", live_url)
    with Client(live_url) as client:
        model_id = client.http.post(
            "/v1/models?name=m.onnx", content=mlp_bytes, headers={"content-type": "application/octet-stream"}
        ).json()["id"]

        def cancel_when_queued() -> None:
            queued = wait_for(lambda: client.jobs("queued"), 300, "the job to be queued", interval=0.05)
            client.cancel(queued[0].id)

        canceller = threading.Thread(target=cancel_when_queued)
        canceller.start()
        code, out, _ = cli(capsys, "jobs", "submit", model_id, "--steps", '[{"pass": "quantize.dynamic"}]', "--wait")
        canceller.join()
    assert code == 1 and "cancelled" in out
