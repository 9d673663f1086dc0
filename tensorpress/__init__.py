"""The TensorPress client: ``from tensorpress import Client`` (see :mod:`tensorpress.client`)."""

from tensorpress.client import ApiError, Client, Dataset, Job, Model

__all__ = ["ApiError", "Client", "Dataset", "Job", "Model"]
