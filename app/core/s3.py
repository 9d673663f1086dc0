"""S3-compatible object storage (``TENSORPRESS_STORAGE_URL=s3://bucket/prefix``): AWS S3, MinIO, Ceph, R2.

The same contract as the local store. Writes are staged on local disk (running sha256 and byte count, the
limit enforced while receiving), then uploaded — multipart above ``TENSORPRESS_S3_MULTIPART_BYTES`` — and
never overwritten; the sha256 is ours, recorded in the database (S3's ETag is not a content hash for multipart
objects). Readers that need a file (workers loading a model or dataset) get a local copy from a cache under
the data dir, fetched once. Downloads stream through the API, or redirect to a presigned URL with
``TENSORPRESS_S3_PRESIGNED_DOWNLOADS``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.core.errors import Conflict
from app.core.storage import CHUNK, StagedFile, Store


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, local: Path, client: Any, multipart_bytes: int,
                 presigned: bool) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client
        self.staging_dir = local / "staging"
        self.cache_dir = local / "cache"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.multipart_bytes = multipart_bytes
        self.presigned = presigned

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/") or key.startswith(".staging"):
            raise ValueError(f"invalid storage key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _upload(self, source: Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        if self._exists(key):
            raise Conflict(f"storage key {key} already exists")
        config = TransferConfig(multipart_threshold=self.multipart_bytes, multipart_chunksize=self.multipart_bytes)
        self.client.upload_file(str(source), self.bucket, self._key(key), Config=config)

    def commit(self, staged: StagedFile, key: str) -> None:
        staged.finish()
        try:
            self._upload(staged.path, key)
        finally:
            staged.path.unlink(missing_ok=True)

    def copy(self, source_key: str, key: str) -> None:
        if self._exists(key):
            raise Conflict(f"storage key {key} already exists")
        self.client.copy({"Bucket": self.bucket, "Key": self._key(source_key)}, self.bucket, self._key(key))

    def path(self, key: str) -> Path:
        """A local copy of the object (cached: stored objects never change)."""
        local = self.cache_dir / self._key(key)
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
            self.client.download_file(self.bucket, self._key(key), str(partial))
            os.replace(partial, local)
        return local

    def size(self, key: str) -> int:
        return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]

    def size_or_none(self, key: str) -> int | None:
        return self.size(key) if self._exists(key) else None

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end}")["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def presigned_url(self, key: str, filename: str, expires_s: int = 900) -> str:
        from urllib.parse import quote

        return self.client.generate_presigned_url("get_object", ExpiresIn=expires_s, Params={
            "Bucket": self.bucket, "Key": self._key(key),
            "ResponseContentDisposition": f"attachment; filename*=UTF-8''{quote(filename, safe='')}"})

    def delete_prefix(self, prefix: str) -> None:
        full = self._key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", []) if
                       o["Key"] == full or o["Key"].startswith(full + "/")]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})
        shutil.rmtree(self.cache_dir / full, ignore_errors=True)

    def entries(self, top: str) -> Iterator[tuple[str, float]]:
        """Every ``top/<id>`` prefix with the newest modification time of its objects."""
        newest: dict[str, float] = {}
        base = self._key(top) + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(base):].split("/", 1)[0]
                newest[name] = max(newest.get(name, 0.0), obj["LastModified"].timestamp())
        for name, mtime in newest.items():
            yield f"{top}/{name}", mtime

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def make_s3_store(url: str, settings: Any) -> S3Store:
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                          aws_access_key_id=settings.s3_access_key_id,
                          aws_secret_access_key=settings.s3_secret_access_key)
    return S3Store(bucket, prefix, settings.data_dir.resolve(), client, settings.s3_multipart_bytes,
                   settings.s3_presigned_downloads)
