"""ORM classes, one file per table. Importing this package registers every table on ``Base.metadata``."""

from app.models.api_key import ApiKey
from app.models.artifact import Artifact
from app.models.base import Base
from app.models.dataset import Dataset
from app.models.idempotency import IdempotencyKey
from app.models.job import Job, JobLog
from app.models.model import Model
from app.models.quota_lock import QuotaLock
from app.models.webhook import Webhook, WebhookDelivery
from app.models.worker import Worker

__all__ = ["ApiKey", "Artifact", "Base", "Dataset", "IdempotencyKey", "Job", "JobLog", "Model", "QuotaLock",
           "Webhook", "WebhookDelivery", "Worker"]
