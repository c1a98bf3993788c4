"""One small storage interface for the lake and for inputs (see :mod:`.base`), with a local and
an Azure backend; :func:`open_storage` picks one for a URL."""

from __future__ import annotations

from insights_link.core.paths import is_remote, join
from insights_link.storage.base import (
    CredentialsError,
    LockBusy,
    LockHandle,
    LockLost,
    ObjectInfo,
    PreconditionFailed,
    Storage,
    StorageError,
)

__all__ = [
    "CredentialsError",
    "LockBusy",
    "LockHandle",
    "LockLost",
    "ObjectInfo",
    "PreconditionFailed",
    "Storage",
    "StorageError",
    "is_remote",
    "join",
    "open_storage",
]


def open_storage(url: str) -> Storage:
    """The storage for a lake root or input location: a local folder or an ``abfss://`` /
    ``https://<account>.dfs|blob.core.windows.net`` URL."""
    if is_remote(url):
        from insights_link.storage.azure import AzureStorage  # Azure SDKs load only when used

        return AzureStorage.from_url(url)
    from insights_link.storage.local import LocalStorage

    return LocalStorage(url)
