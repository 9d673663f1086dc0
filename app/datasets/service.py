"""Datasets: ``.npz`` uploads, read from their headers, checked against a model when a job names them."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.core.archives import ArchiveLimits
from app.core.db import on_commit
from app.core.errors import Conflict, NotFound
from app.core.pagination import Page
from app.core.quotas import claim_storage
from app.core.settings import get_settings
from app.core.storage import StagedFile, Store
from app.datasets import repository
from app.datasets.npz import read_arrays
from app.models import Dataset
from app.models.base import new_id

ROLES = ("calibration", "training", "validation", "evaluation")
LABELS = "labels"


def create(session: Session, store: Store, tenant: str, name: str, staged: StagedFile) -> Dataset:
    dataset_id = new_id()
    try:
        staged.finish()
        arrays, samples = read_arrays(staged.path, ArchiveLimits(**get_settings().archive_limits))
        key = f"datasets/{dataset_id}/data.npz"
        store.commit(staged, key)
    except BaseException:
        staged.discard()
        raise
    on_commit(session, None, rollback=lambda: store.delete_prefix(f"datasets/{dataset_id}"))
    claim_storage(session, tenant, staged.size)
    return repository.add(session, Dataset(id=dataset_id, tenant=tenant, name=name, size_bytes=staged.size,
                                           sha256=staged.sha256, storage_key=key, arrays=arrays, samples=samples))


def get(session: Session, tenant: str | None, dataset_id: str) -> Dataset:
    dataset = repository.get(session, tenant, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


def list_page(session: Session, tenant: str | None, page: Page) -> tuple[list[Dataset], str | None]:
    return repository.list_page(session, tenant, page)


def delete(session: Session, store: Store, tenant: str | None, dataset_id: str) -> None:
    dataset = get(session, tenant, dataset_id)
    if repository.used_by_active_job(session, dataset.tenant, dataset_id):
        raise Conflict(f"dataset {dataset_id} is used by a queued or running job; cancel it first")
    repository.delete(session, dataset)
    on_commit(session, lambda: store.delete_prefix(f"datasets/{dataset_id}"))


def mismatches(dataset: Dataset, inputs: list[dict[str, Any]]) -> list[str]:
    """Why ``dataset`` cannot feed a model with these inputs (empty when it fits)."""
    problems = []
    arrays = {a["name"]: a for a in dataset.arrays}
    for spec in inputs:
        array = arrays.get(spec["name"])
        if array is None:
            problems.append(f"array {spec['name']!r} is missing (the model's inputs are "
                            f"{', '.join(s['name'] for s in inputs)})")
            continue
        if array["dtype"] != spec["dtype"]:
            problems.append(f"array {spec['name']!r} is {array['dtype']}; the model takes {spec['dtype']}")
        if len(array["shape"]) != len(spec["shape"]):
            problems.append(f"array {spec['name']!r} has shape {array['shape']}; the model takes rank "
                            f"{len(spec['shape'])} {spec['shape']}")
            continue
        for axis, (got, want) in enumerate(zip(array["shape"][1:], spec["shape"][1:], strict=True), start=1):
            if isinstance(want, int) and got != want:
                problems.append(f"array {spec['name']!r} has {got} on axis {axis}; the model takes {want} "
                                f"(shape {spec['shape']})")
    extra = sorted(set(arrays) - {s["name"] for s in inputs} - {LABELS})
    if extra:
        problems.append(f"unexpected array(s) {', '.join(map(repr, extra))}: name arrays after the model's inputs, "
                        f"plus an optional {LABELS!r}")
    labels = arrays.get(LABELS)
    if labels is not None and not (labels["dtype"].startswith(("int", "uint", "float"))):
        problems.append(f"{LABELS!r} must hold integer class ids or float targets, not {labels['dtype']}")
    return problems
