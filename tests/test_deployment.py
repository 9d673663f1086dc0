"""What can be checked of the container deployment without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_build_existing_targets_with_the_shared_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "worker-gpu", "migrate", "redis", "postgres", "minio", "minio-bucket"} <= set(services)
    redis_command = services["redis"]["command"]
    assert "--appendonly" in redis_command and redis_command[redis_command.index("--maxmemory-policy") + 1] == \
        "noeviction"
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.M))
    assert {"api", "worker", "worker-gpu"} <= targets
    for name in ("api", "worker", "worker-gpu", "migrate"):
        assert services[name]["build"]["target"] in targets
    for name in ("api", "worker", "worker-gpu"):
        env = services[name]["environment"]
        assert env["TENSORPRESS_BROKER_URL"].startswith("redis://")
        assert env["TENSORPRESS_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["TENSORPRESS_AUTH"] == "required"  # the API listens on every interface
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
        bucket = env["TENSORPRESS_STORAGE_URL"].removeprefix("s3://").split("/")[0]
        assert env["TENSORPRESS_S3_ENDPOINT_URL"] == "http://minio:9000"
        minio = services["minio"]["environment"]
        assert (env["TENSORPRESS_S3_ACCESS_KEY_ID"], env["TENSORPRESS_S3_SECRET_ACCESS_KEY"]) == (
            minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
        assert f"local/{bucket}" in services["minio-bucket"]["entrypoint"][-1]
    assert all("healthcheck" in services[name] for name in services if name not in ("migrate", "minio-bucket"))
    [device] = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_dockerfile_copies_what_exists():
    for source in re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(), re.M):
        assert (ROOT / source).exists(), source


def test_every_setting_in_compose_is_one_the_code_reads():
    from app.core.settings import Settings

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    known = {f"TENSORPRESS_{name.upper()}" for name in Settings.model_fields}
    used = {key for service in compose["services"].values() for key in (service.get("environment") or {})
            if key.startswith("TENSORPRESS_")}
    assert used and used <= known, used - known
