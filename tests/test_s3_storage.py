"""S3-compatible storage, against a real S3 server on loopback (moto's standalone server)."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.conftest import reset_caches
from tests.factories import onnx_mlp
from tests.test_cli_up import free_port
from tests.workers.test_runner import run

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
BUCKET = "tensorpress-test"


@pytest.fixture
def s3(env, monkeypatch):
    """A moto S3 server on 127.0.0.1 with one bucket; the service's store points at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = {"STORAGE_URL": f"s3://{BUCKET}/tp", "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "S3_REGION": "us-east-1", "S3_ACCESS_KEY_ID": "test", "S3_SECRET_ACCESS_KEY": "test",
                "S3_MULTIPART_BYTES": str(5 << 20)}
    for name, value in settings.items():
        monkeypatch.setenv(f"TENSORPRESS_{name}", value)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=BUCKET)
    reset_caches()
    yield client
    reset_caches()
    server.stop()


def objects(client) -> dict[str, dict]:
    return {o["Key"]: o for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_models_jobs_and_artifacts_live_in_s3(client, s3, monkeypatch, capsys):
    big = onnx_mlp(sizes=(1024, 2048, 1024, 10))  # 16 MB: a multipart upload at 5 MiB parts
    model = client.post("/v1/models?name=big.onnx", content=big, headers={"content-type": "application/octet-stream"})
    assert model.status_code == 201, model.text
    key = f"tp/models/{model.json()['id']}/model.onnx"
    stored = objects(s3)[key]
    assert stored["Size"] == len(big) and stored["ETag"].strip('"').endswith("-4")  # 4 parts
    assert model.json()["sha256"] == hashlib.sha256(big).hexdigest()  # ours, not S3's ETag

    job_id = client.post("/v1/jobs", json={"model_id": model.json()["id"],
                                           "steps": [{"pass": "quantize.dynamic"}]}).json()["id"]
    run(job_id)  # the worker reads the model through the store's local cache and writes the artifact to S3
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", client.get(f"/v1/jobs/{job_id}/logs").text
    [artifact] = job["artifacts"]
    assert f"tp/artifacts/{artifact['id']}/{artifact['filename']}" in objects(s3)
    download = client.get(f"/v1/artifacts/{artifact['id']}/download")
    assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == artifact["sha256"]
    tail = client.get(f"/v1/artifacts/{artifact['id']}/download", headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == download.content[-100:]

    monkeypatch.setenv("TENSORPRESS_S3_PRESIGNED_DOWNLOADS", "true")
    reset_caches()
    redirect = client.get(f"/v1/artifacts/{artifact['id']}/download", follow_redirects=False)
    assert redirect.status_code == 307
    fetched = httpx.get(redirect.headers["location"])
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == artifact["sha256"]

    from app.cli import main

    with pytest.raises(SystemExit) as done:
        main(["check"])
    assert done.value.code == 0, capsys.readouterr().out
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not [k for k in objects(s3) if k.startswith("tp/artifacts/")]
    assert client.get("/readyz").json()["checks"]["store"] == "ok"
