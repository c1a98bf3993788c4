"""Azure backend of the storage interface: the lake in ADLS Gen2 (or plain Blob storage).

What: :class:`AzureStorage` maps the keys of :mod:`insights_link.storage` to blobs below a
container ("file system") prefix and implements the same methods as ``LocalStorage``.

Why it looks like this:
- Bytes move through the **Blob API** (``azure-storage-blob``). Real ADLS Gen2 accounts serve
  it too, and it is the only API the Azurite emulator implements, so the same code is what the
  tests exercise. A write is one block-blob commit, so readers never see a partial object.
- Only the calls that need a hierarchical namespace (ACLs for ``grant_read``) use the DataLake
  SDK, behind :meth:`AzureStorage.is_hns_enabled`.
- Every SDK failure becomes a one-line :class:`~insights_link.storage.StorageError` naming the
  location and the kind of failure, with secrets (account key, SAS, connection string) scrubbed.
- Transient failures (timeouts, dropped connections, 5xx, 429) are retried with capped,
  jittered exponential backoff; the numbers can be tuned by environment variables
  (``INSIGHTS_LINK_AZURE_RETRIES`` and friends, see :class:`RetrySettings`).

Authentication, first match wins: ``AZURE_STORAGE_CONNECTION_STRING`` (also how Azurite is
reached), ``AZURE_STORAGE_KEY`` (account key for the URL's account), ``AZURE_STORAGE_SAS_TOKEN``,
else ``azure.identity.DefaultAzureCredential``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobServiceClient, ContainerClient
from azure.storage.blob import ExponentialRetry as BlobExponentialRetry

from insights_link.storage.base import (
    CredentialsError,
    InputChanged,
    LockBusy,
    LockLost,
    ObjectInfo,
    PreconditionFailed,
    StorageError,
    holder_text,
    join,
)

if TYPE_CHECKING:
    from azure.storage.filedatalake import DataLakeServiceClient, FileSystemClient

logger = logging.getLogger(__name__)

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT_KEY = "AZURE_STORAGE_KEY"
ENV_SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"
ENV_RETRIES = "INSIGHTS_LINK_AZURE_RETRIES"
ENV_BACKOFF = "INSIGHTS_LINK_AZURE_BACKOFF"
ENV_BACKOFF_MAX = "INSIGHTS_LINK_AZURE_BACKOFF_MAX"
ENV_CONNECT_TIMEOUT = "INSIGHTS_LINK_AZURE_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "INSIGHTS_LINK_AZURE_READ_TIMEOUT"
ENV_LEASE_SECONDS = "INSIGHTS_LINK_LEASE_SECONDS"  # the lock's lease, 15-60 s (default 30)
#: A lease is trusted only while this much of it is left: a request started later could land
#: after the lease lapsed (its read timeout bounds how late), so the commit is conditional too.
LEASE_SAFETY_SECONDS = 5.0
_LOST_LEASE_CODES = {
    "LeaseIdMismatchWithLeaseOperation",
    "LeaseNotPresentWithLeaseOperation",
    "LeaseLost",
    "LeaseIsBrokenAndCannotBeRenewed",
    "LeaseIdMismatchWithBlobOperation",
    "LeaseNotPresentWithBlobOperation",
}

# open_write / open_read keep this much in memory before spilling to a temp file.
SPOOL_MAX_BYTES = 32 * 1024 * 1024
# How long a pending server-side copy may take before ``move`` gives up.
COPY_TIMEOUT_SECONDS = 600.0
# Parallel deletes in ``delete_prefix``.
DELETE_WORKERS = 8

_FOLDER_MARKER = "hdi_isfolder"  # metadata of directory entries (HNS) and tool-made markers
_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_HOST_RE = re.compile(r"^(?P<account>[^.]+)\.(?P<service>dfs|blob)\.(?P<suffix>core\.[a-z0-9.-]+)$")
_OBJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_URL_FORMS = (
    "abfss://<filesystem>@<account>.dfs.core.windows.net/<path> or "
    "https://<account>.dfs.core.windows.net/<filesystem>/<path> or "
    "https://<account>.blob.core.windows.net/<filesystem>/<path>"
)


def _object_ids(ids: list[str], flag: str, where: str) -> list[str]:
    """``ids`` if each is an Entra object id (a GUID); a :class:`StorageError` naming the others."""
    bad = [o for o in ids if not _OBJECT_ID_RE.match(o)]
    if bad:
        raise StorageError(f"{flag} takes Entra object ids (GUIDs){where}; not one: {', '.join(bad)}")
    return ids


# LockBusy lives in storage.py so that callers catch one type for every backend.


# --------------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True)
class AzureLocation:
    """A parsed lake URL: account, file system (container), key prefix and endpoint suffix."""

    url: str  # canonical form of the URL the user gave (no query string, no trailing '/')
    account: str
    file_system: str
    prefix: str  # '' or 'a/b', no leading or trailing '/'
    endpoint_suffix: str = "core.windows.net"

    @property
    def blob_account_url(self) -> str:
        return f"https://{self.account}.blob.{self.endpoint_suffix}"

    @property
    def dfs_account_url(self) -> str:
        return f"https://{self.account}.dfs.{self.endpoint_suffix}"


def parse_url(url: str) -> AzureLocation:
    """Parse an ``abfss://``, ``abfs://`` or ``https://`` lake URL; :class:`StorageError` if
    it is not one (the message names the URL, without any query string)."""
    shown = url.split("?", 1)[0].split("#", 1)[0]

    def bad(why: str, *, forms: bool = True) -> StorageError:
        expected = f"; expected {_URL_FORMS}" if forms else ""
        return StorageError(f"invalid Azure storage URL {shown!r}: {why}{expected}")

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from exc
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise bad(
            "remove the query string (put a SAS token in AZURE_STORAGE_SAS_TOKEN instead)",
            forms=False,
        )
    host = (parts.hostname or "").lower()
    if scheme in ("abfss", "abfs"):
        if "@" not in parts.netloc or not parts.username:
            raise bad("the file system name is missing before '@'")
        file_system, path = unquote(parts.username), parts.path
        if parts.password is not None:
            raise bad("unexpected ':' in the file system name")
    elif scheme == "https":
        if parts.username is not None:
            raise bad("unexpected '@' in the host")
        file_system, _, path = parts.path.lstrip("/").partition("/")
        file_system = unquote(file_system)
    elif scheme == "http":
        raise bad(
            "plain http is not supported (for Azurite, set AZURE_STORAGE_CONNECTION_STRING and "
            "use abfss://<container>@devstoreaccount1.dfs.core.windows.net/<path>)"
        )
    else:
        raise bad(f"unsupported scheme {parts.scheme!r}")
    if port is not None:
        raise bad("a port is not allowed")
    match = _HOST_RE.match(host)
    if not match:
        raise bad(f"host {host!r} is not <account>.dfs.<suffix> or <account>.blob.<suffix>")
    account = match["account"]
    if not _ACCOUNT_RE.match(account):
        raise bad(f"account name {account!r} must be 3-24 lowercase letters and digits", forms=False)
    if not file_system:
        raise bad("the file system (container) name is missing")
    if not _CONTAINER_RE.match(file_system):
        raise bad(
            f"file system name {file_system!r} must be 3-63 lowercase letters, digits and "
            "single hyphens, starting and ending with a letter or digit",
            forms=False,
        )
    segments = [s for s in unquote(path).split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise bad("'.' and '..' are not allowed in the path", forms=False)
    prefix = "/".join(segments)
    tail = f"/{quote(prefix)}" if prefix else ""
    if scheme == "https":
        canonical = f"https://{host}/{file_system}{tail}"
    else:
        canonical = f"{scheme}://{file_system}@{host}{tail}"
    return AzureLocation(canonical, account, file_system, prefix, match["suffix"])


# --------------------------------------------------------------------------------------------
# Retries


@dataclass(frozen=True)
class RetrySettings:
    """Retry and timeout numbers for every Azure request.

    ``retries`` bounds retries per request (connect failures, dropped connections/timeouts,
    5xx, 408, 429); waits grow ``backoff * 2**(n-1)`` seconds, capped at ``backoff_max``, with
    +-25 % jitter. Environment overrides: INSIGHTS_LINK_AZURE_RETRIES, _BACKOFF, _BACKOFF_MAX,
    _CONNECT_TIMEOUT, _READ_TIMEOUT (seconds)."""

    retries: int = 5
    backoff: float = 0.5
    backoff_max: float = 8.0
    connect_timeout: float = 20.0
    read_timeout: float = 60.0

    @classmethod
    def from_env(cls) -> RetrySettings:
        defaults = cls()
        return cls(
            retries=int(_env_number(ENV_RETRIES, defaults.retries, integer=True)),
            backoff=_env_number(ENV_BACKOFF, defaults.backoff),
            backoff_max=_env_number(ENV_BACKOFF_MAX, defaults.backoff_max),
            connect_timeout=_env_number(ENV_CONNECT_TIMEOUT, defaults.connect_timeout),
            read_timeout=_env_number(ENV_READ_TIMEOUT, defaults.read_timeout),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        base = min(self.backoff_max, self.backoff * 2 ** max(attempt - 1, 0))
        return min(self.backoff_max, base * random.uniform(0.75, 1.25))

    def client_kwargs(self, retry_class: type[Any]) -> dict[str, Any]:
        """Keyword arguments for a storage SDK client constructor."""
        policy = retry_class(
            self,
            retry_total=self.retries,
            retry_connect=self.retries,
            retry_read=self.retries,
            retry_status=self.retries,
            retry_to_secondary=False,
        )
        return {
            "retry_policy": policy,
            "connection_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
        }


def _env_number(name: str, default: float, *, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError as exc:
        kind = "a whole number" if integer else "a number"
        raise StorageError(f"{name}={raw!r} is not {kind}") from exc
    if value < 0:
        raise StorageError(f"{name}={raw!r} must not be negative")
    return value


class _BackoffMixin:
    """Our backoff and logging on top of the storage SDK's retry policy, plus 429 retries.

    The storage SDK's own policy (kept for its storage-specific bookkeeping) retries connect and
    read failures, 408 and 5xx but not 429 (Azure Storage throttles with 503); 429 is retried
    here, honouring ``Retry-After``."""

    def __init__(self, settings: RetrySettings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(**kwargs)

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return self.settings.delay(int(settings.get("count", 1)))

    def increment(self, settings: dict[str, Any], *args: Any, error: Any = None, **kwargs: Any) -> bool:
        """Never retry a failure to get a token: missing or wrong credentials are not transient."""
        if isinstance(error, ClientAuthenticationError):
            return False
        return super().increment(settings, *args, error=error, **kwargs)  # type: ignore[misc]

    def sleep(self, settings: dict[str, Any], transport: Any) -> None:
        delay = self.get_backoff_time(settings)
        history = settings.get("history") or []
        last = history[-1] if history else None
        if last is not None and last.error is not None:
            reason = type(last.error).__name__
        elif last is not None and last.http_response is not None:
            reason = f"HTTP {last.http_response.status_code}"
        else:
            reason = "transient failure"
        logger.warning(
            "Azure storage request failed (%s); retry %s of %s in %.2f s",
            reason,
            settings.get("count"),
            self.settings.retries,
            delay,
        )
        transport.sleep(delay)

    def send(self, request: Any) -> Any:
        # Each inner send may itself retry 5xx/connect failures, so a mix of 429s and 5xx can
        # take up to (retries + 1) ** 2 attempts; still bounded.
        body = request.http_request.body
        position: int | None = None
        if hasattr(body, "read"):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                position = body.tell()
        response = super().send(request)  # type: ignore[misc]
        for attempt in range(1, self.settings.retries + 1):
            if response.http_response.status_code != 429:
                break
            if hasattr(body, "read"):
                if position is None:
                    break
                body.seek(position)
            delay = _retry_after(response.http_response.headers) or self.settings.delay(attempt)
            delay = min(delay, self.settings.backoff_max)
            logger.warning(
                "Azure storage throttled the request (HTTP 429); retry %d of %d in %.2f s",
                attempt,
                self.settings.retries,
                delay,
            )
            request.context.transport.sleep(delay)
            response = super().send(request)  # type: ignore[misc]
        return response


def _retry_after(headers: Any) -> float | None:
    try:
        return max(float(headers.get("Retry-After", "")), 0.0)
    except (TypeError, ValueError):
        return None


class _BlobRetry(_BackoffMixin, BlobExponentialRetry):
    """Retry policy for Blob clients."""


@functools.cache
def _datalake_retry_class() -> type[Any]:
    from azure.storage.filedatalake import ExponentialRetry as DataLakeExponentialRetry

    class _DataLakeRetry(_BackoffMixin, DataLakeExponentialRetry):
        """Retry policy for DataLake clients (the DataLake SDK has its own copy of the base)."""

    return _DataLakeRetry


# --------------------------------------------------------------------------------------------
# Credentials and secrets


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _connection_string_fields(conn: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in conn.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return fields


def describe_credential_source(account: str | None = None) -> str:
    """Which credential ``AzureStorage.from_url`` would use, for logs; never the secret."""
    conn = _env(ENV_CONNECTION_STRING)
    if conn:
        fields = _connection_string_fields(conn)
        name = fields.get("accountname") or (
            "devstoreaccount1" if fields.get("usedevelopmentstorage") else ""
        )
        kind = (
            "a SAS"
            if fields.get("sharedaccesssignature")
            else "an account key"
            if fields.get("accountkey") or fields.get("usedevelopmentstorage")
            else "no secret"
        )
        details = [f"account {name}"] if name else []
        endpoint = fields.get("blobendpoint", "")
        details += [f"blob endpoint {endpoint}"] if endpoint else []
        where = f", {', '.join(details)}" if details else ""
        return f"connection string from {ENV_CONNECTION_STRING} (with {kind}{where})"
    suffix = f" for account {account}" if account else ""
    if _env(ENV_ACCOUNT_KEY):
        return f"account key from {ENV_ACCOUNT_KEY}{suffix}"
    if _env(ENV_SAS_TOKEN):
        return f"SAS token from {ENV_SAS_TOKEN}{suffix}"
    return (
        "azure.identity.DefaultAzureCredential (environment service principal, workload "
        f"identity, managed identity, Azure CLI login){suffix}"
    )


def _secrets() -> list[str]:
    """Every secret value currently configured, longest first, in plain and URL-quoted form."""
    found: set[str] = set()
    conn = _env(ENV_CONNECTION_STRING)
    if conn:
        found.add(conn)
        fields = _connection_string_fields(conn)
        found.update(v for k, v in fields.items() if k in ("accountkey", "sharedaccesssignature"))
    found.add(_env(ENV_ACCOUNT_KEY))
    found.add(_env(ENV_SAS_TOKEN).lstrip("?"))
    found.discard("")
    variants = set(found) | {quote(s, safe="") for s in found}
    return sorted((v for v in variants if len(v) >= 6), key=len, reverse=True)


_SECRET_PATTERNS = (
    re.compile(r"(?i)(AccountKey=)[^;\s'\"]+"),
    re.compile(r"(?i)(SharedAccessSignature=)[^;\s'\"]+"),
    re.compile(r"(?i)([?&]sig=)[^&\s'\"]+"),
    re.compile(r"(?i)(\bsig=)[^&\s'\"]+"),
)


def scrub(text: str) -> str:
    """``text`` without any configured secret or anything that looks like a key or SAS."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


def _scrub_exception(exc: BaseException) -> None:
    """Best effort: scrub secrets from an SDK exception kept as ``__cause__``, so a printed
    traceback does not leak them either."""
    with contextlib.suppress(AttributeError, TypeError):
        exc.args = tuple(scrub(a) if isinstance(a, str) else a for a in exc.args)
        message = getattr(exc, "message", None)
        if isinstance(message, str):
            cast(Any, exc).message = scrub(message)


def _one_line(text: str, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_NETWORK_DETAIL = re.compile(
    r"\[Errno -?\d+\][^'\"\)]*|timed out|Connection aborted|Connection reset by peer|"
    r"Remote end closed connection[^'\"\)]*|Name or service not known|"
    r"Temporary failure in name resolution|Max retries exceeded"
)
_AUTH_CODES = {
    "AuthenticationFailed",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
}
_PERMISSION_CODES = {
    "AuthorizationPermissionMismatch",
    "AuthorizationPermissionDenied",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch",
    "InsufficientAccountPermissions",
}


def _error_code(exc: AzureError) -> str:
    code = getattr(exc, "error_code", None)
    if code is None:
        return ""
    return str(getattr(code, "value", code))


def to_storage_error(
    exc: BaseException, action: str, where: str, *, credential: str = "", retries: int = 0
) -> StorageError:
    """A one-line, secret-free :class:`StorageError` for an Azure SDK failure."""
    _scrub_exception(exc)
    status = getattr(exc, "status_code", None)
    code = _error_code(exc) if isinstance(exc, AzureError) else ""
    cred = f" [credentials: {credential}]" if credential else ""
    gave_up = f"; gave up after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
    from azure.identity import CredentialUnavailableError

    credentials_problem = (
        isinstance(exc, CredentialUnavailableError | ClientAuthenticationError)
        or code in _PERMISSION_CODES
        or code in _AUTH_CODES
        or code == "AuthorizationFailure"
        or status in (401, 403)
    )
    if isinstance(exc, CredentialUnavailableError) or (
        isinstance(exc, ClientAuthenticationError)
        and "DefaultAzureCredential failed to retrieve a token" in str(exc)
    ):
        message = (
            f"no Azure credentials available to {action} {where}: set "
            f"{ENV_CONNECTION_STRING}, {ENV_ACCOUNT_KEY} or {ENV_SAS_TOKEN}, or sign in "
            "(az login, managed identity, workload identity)"
        )
    elif code in _PERMISSION_CODES:
        message = (
            f"permission denied to {action} {where}: the identity needs a data role such as "
            f"Storage Blob Data Contributor (or ACL access on the folders) ({code}){cred}"
        )
    elif code == "AuthorizationFailure":
        # Real Azure: a valid signature that is still refused (SAS scope, firewall rules);
        # Azurite: also a wrong account key.
        message = (
            f"authentication or authorization failed for {where} (while trying to {action}): "
            "check the account key / SAS token / credentials and the account's firewall and "
            f"network rules (AuthorizationFailure){cred}"
        )
    elif (
        isinstance(exc, ClientAuthenticationError)
        or code in _AUTH_CODES
        or status == 401
        or (status == 403 and not code)
    ):
        message = (
            f"authentication failed for {where} (while trying to {action}): check the account "
            f"key / SAS token / credentials{cred}"
        )
    elif status == 403:
        message = f"access to {where} was refused (while trying to {action}): HTTP 403 {code}"
    elif isinstance(exc, ResourceNotFoundError):
        message = f"cannot {action} {where}: it does not exist ({code or 'HTTP 404'})"
    elif isinstance(exc, ServiceRequestError):
        detail = _network_detail(exc)
        message = f"cannot reach Azure storage to {action} {where} ({detail}){gave_up}"
    elif isinstance(exc, ServiceResponseError):
        detail = _network_detail(exc)
        message = (
            f"the connection to Azure storage dropped or timed out while trying to {action} "
            f"{where} ({detail}){gave_up}"
        )
    elif status in (408, 429) or (isinstance(status, int) and status >= 500):
        message = (
            f"Azure storage is busy or unavailable: cannot {action} {where} "
            f"(HTTP {status}{' ' + code if code else ''}){gave_up}"
        )
    elif isinstance(exc, HttpResponseError):
        first = str(exc).splitlines()[0] if str(exc) else ""
        message = f"cannot {action} {where}: HTTP {status} {code}: {first}"
    else:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = f"cannot {action} {where}: {type(exc).__name__}: {first}"
    error = CredentialsError if credentials_problem else StorageError
    return error(_one_line(scrub(message), limit=600))


def _network_detail(exc: BaseException) -> str:
    found = _NETWORK_DETAIL.search(str(exc))
    return _one_line(found.group(0).strip(), 120) if found else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Connecting


def _connect(
    location: AzureLocation, settings: RetrySettings
) -> tuple[BlobServiceClient, Callable[[], DataLakeServiceClient], str]:
    """Blob service client, a DataLake client factory and a description of the credential."""
    source = describe_credential_source(location.account)
    blob_kwargs = settings.client_kwargs(_BlobRetry)
    conn = _env(ENV_CONNECTION_STRING)
    if conn:
        try:
            service = BlobServiceClient.from_connection_string(conn, **blob_kwargs)
        except ValueError as exc:
            _scrub_exception(exc)
            raise StorageError(f"{ENV_CONNECTION_STRING} is malformed; cannot open {location.url}") from exc
        if (service.account_name or "").lower() != location.account:
            raise StorageError(
                f"{location.url} names account {location.account!r} but "
                f"{ENV_CONNECTION_STRING} is for account {service.account_name!r}; "
                f"fix the URL or unset {ENV_CONNECTION_STRING}"
            )

        def datalake_from_connection_string() -> DataLakeServiceClient:
            from azure.storage.filedatalake import DataLakeServiceClient

            kwargs = settings.client_kwargs(_datalake_retry_class())
            return DataLakeServiceClient.from_connection_string(conn, **kwargs)

        return service, datalake_from_connection_string, source

    credential: Any
    key = _env(ENV_ACCOUNT_KEY)
    sas = _env(ENV_SAS_TOKEN).lstrip("?")
    if key:
        credential = {"account_name": location.account, "account_key": key}
    elif sas:
        # A string SAS becomes part of each client's URL: never log SDK URLs, and never send
        # them as a copy source (see AzureStorage._server_copy).
        credential = sas
    else:
        from azure.identity import DefaultAzureCredential

        try:
            credential = DefaultAzureCredential()
        except ValueError as exc:  # e.g. AZURE_CLIENT_ID set but empty
            raise CredentialsError(f"invalid Azure credential settings in the environment: {exc}") from None
    service = BlobServiceClient(location.blob_account_url, credential=credential, **blob_kwargs)

    def datalake_with_credential() -> DataLakeServiceClient:
        from azure.storage.filedatalake import DataLakeServiceClient

        kwargs = settings.client_kwargs(_datalake_retry_class())
        return DataLakeServiceClient(location.dfs_account_url, credential=credential, **kwargs)

    return service, datalake_with_credential, source


@functools.lru_cache(maxsize=1)
def _default_credential() -> Any:
    """One DefaultAzureCredential per process: it caches its token and refreshes it near expiry."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def object_store_options(location: AzureLocation) -> dict[str, str]:
    """Options for the ``object_store`` crate (delta-rs, polars) in the same authentication
    order as :func:`_connect`: connection string, account key, SAS, then a bearer token from
    ``DefaultAzureCredential``, fetched on every call so that a commit never uses an expired one.
    A connection string's own blob endpoint (Azurite, a sovereign cloud) is kept."""
    options = {"account_name": location.account}
    conn = _env(ENV_CONNECTION_STRING)
    if conn:
        fields = _connection_string_fields(conn)
        if fields.get("usedevelopmentstorage"):
            return {"use_emulator": "true", "allow_http": "true", "account_name": "devstoreaccount1"}
        if fields.get("accountkey"):
            options["account_key"] = fields["accountkey"]
        elif fields.get("sharedaccesssignature"):
            options["sas_token"] = fields["sharedaccesssignature"].lstrip("?")
        endpoint = fields.get("blobendpoint", "").rstrip("/")
        if endpoint:
            options["azure_storage_endpoint"] = endpoint
            if endpoint.startswith("http://"):
                options["allow_http"] = "true"
        return options
    if _env(ENV_ACCOUNT_KEY):
        return options | {"account_key": _env(ENV_ACCOUNT_KEY)}
    if _env(ENV_SAS_TOKEN):
        return options | {"sas_token": _env(ENV_SAS_TOKEN).lstrip("?")}
    try:
        token = _default_credential().get_token("https://storage.azure.com/.default")
    except (ClientAuthenticationError, ValueError) as exc:
        raise CredentialsError(
            f"no Azure credentials available to reach {location.url}: set "
            f"{ENV_CONNECTION_STRING}, {ENV_ACCOUNT_KEY} or {ENV_SAS_TOKEN}, or sign in for "
            f"DefaultAzureCredential ({_one_line(scrub(str(exc)), 160)})"
        ) from None
    return options | {"bearer_token": token.token}


def _carries_sas(url: str) -> bool:
    """True when an SDK client's URL has a SAS token in its query string (a SAS credential)."""
    return "sig" in parse_qs(urlsplit(url).query)


def _is_folder(metadata: dict[str, str] | None) -> bool:
    return bool(metadata) and str(metadata.get(_FOLDER_MARKER, "")).lower() == "true"


def _union_permissions(a: str, b: str) -> str:
    return "".join(x if x != "-" else y for x, y in zip(a.ljust(3, "-"), b.ljust(3, "-"), strict=False))


def merge_acl(acl: str, grants: dict[str, str]) -> str:
    """``acl`` (a comma-separated POSIX ACL) with access entries ``user:<oid>:<perms>`` added
    or widened for each ``grants`` item, and ``mask::`` widened so the grants take effect."""
    entries = [e.strip() for e in acl.split(",") if e.strip()]
    wanted = dict(grants)
    needed = "---"
    for perms in grants.values():
        needed = _union_permissions(needed, perms)
    merged: list[str] = []
    for entry in entries:
        fields = entry.split(":")
        if len(fields) == 3 and fields[0] == "user" and fields[1] in wanted:
            merged.append(f"user:{fields[1]}:{_union_permissions(fields[2], wanted.pop(fields[1]))}")
        elif len(fields) == 3 and fields[0] == "mask":
            merged.append(f"mask::{_union_permissions(fields[2], needed)}")
        else:
            merged.append(entry)
    merged.extend(f"user:{oid}:{perms}" for oid, perms in wanted.items())
    return ",".join(merged)


# --------------------------------------------------------------------------------------------
# The storage


class Lease:
    """A held blob lease; ``check()`` raises :class:`LockLost` once it can't be trusted: a
    renewal was refused (someone else holds it now), or too long has passed since the last
    successful renewal (a frozen process, a network stall), measured on the monotonic clock."""

    def __init__(self, storage: AzureStorage, key: str, client: BlobLeaseClient, seconds: int):
        self._storage = storage
        self.key = key
        self._client = client
        self.seconds = seconds
        self._renewed = time.monotonic()
        self._lost: str | None = None

    @property
    def id(self) -> str:
        return str(self._client.id)

    def renew(self) -> None:
        """Restart the lease's ``seconds`` countdown (only while it is still ours)."""
        self.check()
        started = time.monotonic()
        try:
            self._client.renew()
        except HttpResponseError as exc:
            if _error_code(exc) in _LOST_LEASE_CODES or exc.status_code in (409, 412):
                self._lost = f"another run took the lease ({_error_code(exc) or exc.status_code})"
            raise to_storage_error(exc, "renew the lease on", self._storage.describe(self.key)) from exc
        except AzureError as exc:
            raise to_storage_error(exc, "renew the lease on", self._storage.describe(self.key)) from exc
        self._renewed = started  # the countdown restarted no earlier than the request was sent

    def check(self) -> None:
        where = self._storage.describe(self.key)
        if self._lost:
            raise LockLost(f"lost the lock {where}: {self._lost}")
        left = self.seconds - (time.monotonic() - self._renewed)
        if left < LEASE_SAFETY_SECONDS:
            self._lost = f"not renewed for {self.seconds - left:.0f} s (the lease lasts {self.seconds} s)"
            raise LockLost(f"lost the lock {where}: {self._lost}")


class AzureStorage:
    """Keys as blobs below ``<file system>/<prefix>`` of an Azure storage account."""

    def __init__(
        self,
        location: AzureLocation,
        service: BlobServiceClient,
        *,
        datalake: Callable[[], DataLakeServiceClient] | None = None,
        credential_source: str = "",
        retries: int = 0,
    ) -> None:
        self.location = location
        self.url = location.url
        self.credential_source = credential_source
        self._service = service
        self._container: ContainerClient = service.get_container_client(location.file_system)
        self._datalake_factory = datalake
        self._retries = retries
        self._hns: bool | None = None

    @classmethod
    def from_url(cls, url: str) -> AzureStorage:
        """The storage for ``abfss://fs@acct.dfs.core.windows.net/path`` (or ``abfs://``,
        ``https://acct.dfs|blob.core.windows.net/fs/path``), authenticated from the
        environment (see the module docstring)."""
        location = parse_url(url)
        settings = RetrySettings.from_env()
        service, datalake, source = _connect(location, settings)
        logger.debug("opening %s with %s", location.url, source)
        return cls(
            location,
            service,
            datalake=datalake,
            credential_source=source,
            retries=settings.retries,
        )

    # -- helpers -----------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return join(self.location.prefix, key)

    def _key(self, name: str) -> str:
        prefix = self.location.prefix
        return name[len(prefix) + 1 :] if prefix else name

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(self._name(key))

    @contextlib.contextmanager
    def _azure_errors(self, action: str, key: str, where: str = "") -> Iterator[None]:
        """Turn any Azure SDK error raised inside the block into a :class:`StorageError`."""
        try:
            yield
        except AzureError as exc:
            raise to_storage_error(
                exc,
                action,
                where or self.describe(key),
                credential=self.credential_source,
                retries=self._retries,
            ) from exc

    def _create_container(self) -> None:
        logger.info("creating file system %s", self.location.file_system)
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()

    def _upload(self, key: str, data: bytes | BinaryIO, length: int) -> None:
        blob = self._blob(key)
        with self._azure_errors("write", key):
            try:
                blob.upload_blob(data, length=length, overwrite=True, max_concurrency=4)
            except ResourceNotFoundError as exc:
                if _error_code(exc) != "ContainerNotFound":
                    raise
                self._create_container()
                if not isinstance(data, bytes):
                    data.seek(0)
                blob.upload_blob(data, length=length, overwrite=True, max_concurrency=4)

    # -- the Storage interface ---------------------------------------------------------------

    def describe(self, key: str = "") -> str:
        return f"{self.url}/{key.strip('/')}" if key.strip("/") else self.url

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def info(self, key: str) -> ObjectInfo | None:
        with self._azure_errors("read the properties of", key):
            try:
                props = self._blob(key).get_blob_properties()
            except ResourceNotFoundError:
                return None
        if _is_folder(props.metadata):
            return None
        return ObjectInfo(key.strip("/"), int(props.size), props.last_modified, str(props.etag or ""))

    def is_folder(self, key: str) -> bool:
        """Whether ``key`` is a directory entry (hierarchical namespace: a folder marker blob)."""
        with self._azure_errors("read the properties of", key):
            try:
                return _is_folder(self._blob(key).get_blob_properties().metadata)
            except ResourceNotFoundError:
                return False

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        folder = self._name(prefix)
        found: list[ObjectInfo] = []
        with self._azure_errors("list", prefix):
            try:
                for blob in self._container.list_blobs(
                    name_starts_with=f"{folder}/" if folder else None, include=["metadata"]
                ):
                    if not _is_folder(blob.metadata):
                        found.append(
                            ObjectInfo(
                                self._key(blob.name), blob.size, blob.last_modified, str(blob.etag or "")
                            )
                        )
            except ResourceNotFoundError:
                return []  # no file system yet: an empty lake
        if not found and prefix.strip("/"):
            single = self.info(prefix)
            return [single] if single else []
        return sorted(found, key=lambda o: o.key)

    def folders(self, prefix: str = "") -> list[str]:
        folder = self._name(prefix)
        start = f"{folder}/" if folder else ""
        names: set[str] = set()
        with self._azure_errors("list", prefix):
            try:
                for item in self._container.walk_blobs(name_starts_with=start or None, delimiter="/"):
                    name = item.name[len(start) :]
                    if name.endswith("/"):  # a prefix: a virtual or real folder
                        names.add(name.rstrip("/"))
            except ResourceNotFoundError:
                return []
        return sorted(names)

    def external(self, key: str = "") -> tuple[str, dict[str, str]]:
        loc = self.location
        path = join(loc.prefix, key)
        uri = f"abfss://{loc.file_system}@{loc.account}.dfs.{loc.endpoint_suffix}/{path}".rstrip("/")
        return uri, object_store_options(loc)

    def read_bytes(self, key: str) -> bytes:
        with self._azure_errors("read", key):
            return self._blob(key).download_blob().readall()

    def open_read(self, key: str) -> BinaryIO:
        """The object's bytes in a seekable temporary file (in memory up to 32 MiB)."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES)
        try:
            with self._azure_errors("read", key):
                self._blob(key).download_blob(max_concurrency=4).readinto(spool)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return cast(BinaryIO, spool)

    def read_range(self, key: str, start: int, end: int, version: str = "") -> BinaryIO:
        """Bytes ``[start, end)`` of the blob (one ranged download) in a seekable temporary file;
        with ``version`` (an ETag) the download is conditional (``If-Match``), so a chunk is
        never read from a blob rewritten or appended to since its boundaries were planned."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES)
        conditions: dict[str, Any] = (
            {"etag": version, "match_condition": MatchConditions.IfNotModified} if version else {}
        )
        try:
            if end > start:
                with self._azure_errors("read", key):
                    try:
                        got = (
                            self._blob(key)
                            .download_blob(offset=start, length=end - start, max_concurrency=4, **conditions)
                            .readinto(spool)
                        )
                    except (ResourceModifiedError, HttpResponseError) as exc:
                        if not isinstance(exc, ResourceModifiedError) and exc.status_code != 412:
                            raise
                        raise InputChanged(
                            f"{self.describe(key)} changed since it was listed (rewritten or appended "
                            "to while it was read in chunks); export it again"
                        ) from exc
                if version and got < end - start:
                    raise InputChanged(
                        f"{self.describe(key)} ended {end - start - got} bytes early: it changed "
                        "since it was listed"
                    )
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return cast(BinaryIO, spool)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._upload(key, bytes(data), len(data))

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        with self._azure_errors("read", key):
            try:
                downloader = self._blob(key).download_blob()
            except ResourceNotFoundError:
                return None, None
            return downloader.readall(), str(downloader.properties.etag)

    def write_if(self, key: str, data: bytes, version: str | None) -> str:
        """One conditional Put Blob: ``If-Match: <etag>``, or ``If-None-Match: *`` for a first
        write. The service checks and writes in one step, so a writer that lost its lock and
        wakes up late gets 412 instead of overwriting a newer commit."""
        blob = self._blob(key)
        if version is None:
            conditions: dict[str, Any] = {"overwrite": False}
        else:
            conditions = {
                "overwrite": True,
                "etag": version,
                "match_condition": MatchConditions.IfNotModified,
            }
        with self._azure_errors("write", key):
            try:
                result = blob.upload_blob(bytes(data), length=len(data), **conditions)
            except ResourceExistsError as exc:
                raise PreconditionFailed(
                    f"{self.describe(key)} was created by another run meanwhile"
                ) from exc
            except ResourceModifiedError as exc:
                raise PreconditionFailed(f"{self.describe(key)} changed since this run read it") from exc
            except HttpResponseError as exc:
                if exc.status_code == 412:
                    raise PreconditionFailed(f"{self.describe(key)} changed since this run read it") from exc
                if _error_code(exc) != "ContainerNotFound":
                    raise
                self._create_container()
                result = blob.upload_blob(bytes(data), length=len(data), **conditions)
        return str(result["etag"])

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Spool what the block writes; upload it as one blob only if the block succeeds."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
            yield cast(BinaryIO, spool)
            length = spool.seek(0, os.SEEK_END)
            spool.seek(0)
            self._upload(key, cast(BinaryIO, spool), length)

    def move(self, src: str, dst: str) -> None:
        if self._name(src) == self._name(dst):
            if not self.exists(src):
                raise StorageError(f"cannot move {self.describe(src)}: it does not exist")
            return
        source, target = self._blob(src), self._blob(dst)
        where = f"{self.describe(src)} to {self.describe(dst)}"
        with self._azure_errors("move", src, where):
            if not self._server_copy(source, target, src):
                logger.info("copying %s through this machine", self.describe(src))
                with self.open_read(src) as data:
                    length = data.seek(0, os.SEEK_END)
                    data.seek(0)
                    self._upload(dst, data, length)
            with contextlib.suppress(ResourceNotFoundError):
                source.delete_blob()

    def _server_copy(self, source: BlobClient, target: BlobClient, src: str) -> bool:
        """Copy inside the account; False when the service will not do it (then the caller
        copies through this machine). Raises when the source does not exist.

        Never with a SAS credential: the service keeps a copy's source URL, SAS included, in the
        target's properties (``x-ms-copy-source``), where anyone who may read the blob (e.g.
        Customer Insights) would find a token that can write the lake."""
        if _carries_sas(source.url):
            if not source.exists():
                raise StorageError(f"cannot move {self.describe(src)}: it does not exist")
            return False
        try:
            result = target.start_copy_from_url(source.url)
        except ResourceNotFoundError:
            if not source.exists():
                raise StorageError(f"cannot move {self.describe(src)}: it does not exist") from None
            logger.info("server-side copy of %s refused (not found)", self.describe(src))
            return False
        except HttpResponseError as exc:
            logger.info(
                "server-side copy of %s refused (HTTP %s %s)",
                self.describe(src),
                exc.status_code,
                _error_code(exc),
            )
            return False
        status = str(result.get("copy_status") or "")
        deadline = time.monotonic() + COPY_TIMEOUT_SECONDS
        pause = 0.2
        while status == "pending":
            if time.monotonic() > deadline:
                with contextlib.suppress(HttpResponseError):
                    target.abort_copy(str(result.get("copy_id")))
                raise StorageError(
                    f"copying {self.describe(src)} did not finish within {COPY_TIMEOUT_SECONDS:.0f} s"
                )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
            status = str(target.get_blob_properties().copy.status or "")
        if status != "success":
            logger.warning("server-side copy of %s ended %r", self.describe(src), status)
            return False
        return True

    def delete(self, key: str) -> None:
        with self._azure_errors("delete", key), contextlib.suppress(ResourceNotFoundError):
            self._blob(key).delete_blob()

    def delete_prefix(self, prefix: str) -> None:
        """Delete every blob below the folder key, then any directory entries (deepest first).

        Deliberately blob by blob: Azurite's DataLake ``delete_directory`` reports success
        but leaves the files, and on real HNS accounts this is equally correct."""
        folder = self._name(prefix)
        files: list[str] = []
        folders: list[str] = []
        with self._azure_errors("delete everything below", prefix):
            try:
                for blob in self._container.list_blobs(
                    name_starts_with=f"{folder}/" if folder else None, include=["metadata"]
                ):
                    (folders if _is_folder(blob.metadata) else files).append(blob.name)
            except ResourceNotFoundError:
                return
            with ThreadPoolExecutor(max_workers=DELETE_WORKERS) as pool:
                list(pool.map(self._delete_name, files))
            for name in sorted(folders, key=lambda n: (n.count("/"), n), reverse=True):
                self._delete_name(name)
            if folder:
                with contextlib.suppress(ResourceNotFoundError):
                    if _is_folder(self._container.get_blob_client(folder).get_blob_properties().metadata):
                        self._delete_name(folder)
        logger.info("deleted %d objects below %s", len(files), self.describe(prefix))

    def _delete_name(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._container.get_blob_client(name).delete_blob()

    # -- hierarchical namespace --------------------------------------------------------------

    def is_hns_enabled(self) -> bool:
        """Whether the account has a hierarchical namespace (ADLS Gen2). Cached."""
        if self._hns is None:
            with self._azure_errors("read the account information of", ""):
                try:
                    info = self._service.get_account_information()
                except HttpResponseError as exc:
                    if exc.status_code != 403:
                        raise
                    info = self._container.get_account_information()  # container-scoped SAS
            value = info.get("is_hns_enabled")
            if value is None:
                logger.warning("%s did not report is_hns_enabled; assuming no", self.url)
            self._hns = bool(value)
        return self._hns

    def file_system_exists(self) -> bool:
        """Whether the lake's file system (container) exists: one read, nothing is created.
        Wrong credentials raise :class:`CredentialsError` (for ``insights-link doctor``)."""
        with self._azure_errors("read the properties of the file system", ""):
            return bool(self._container.exists())

    def access_controls(self, key: str) -> list[tuple[str, str | None]]:
        """The POSIX ACL (``user::rwx,user:<oid>:r-x,...,default:...``) of every folder from the
        file system root down to ``key``, as (path in the file system, ACL) pairs, the ACL None
        for a folder that does not exist. Read-only; needs a hierarchical namespace (for
        ``insights-link doctor``)."""
        fs = self._datalake_file_system()
        segments = [s for s in self._name(key).split("/") if s]
        found: list[tuple[str, str | None]] = []
        with self._azure_errors("read the access control of", key):
            for depth in range(len(segments) + 1):
                path = "/".join(segments[:depth]) or "/"
                try:
                    acl = str(fs.get_directory_client(path).get_access_control().get("acl") or "")
                except ResourceNotFoundError:
                    acl = None
                found.append((path, acl))
        return found

    def _datalake_file_system(self) -> FileSystemClient:
        if self._datalake_factory is None:
            raise StorageError(f"no DataLake client configured for {self.url}")
        return self._datalake_factory().get_file_system_client(self.location.file_system)

    def grant_read(self, folder_key: str, object_ids: Iterable[str]) -> None:
        """Let each Entra object id read everything below ``folder_key``, now and later.

        Adds ``user:<oid>:r-x`` and ``default:user:<oid>:r-x`` recursively on the folder, and
        ``user:<oid>:--x`` on each parent up to the file system root so they can traverse.
        Needs a hierarchical namespace (ACLs do not exist otherwise)."""
        ids = _object_ids([o.strip() for o in object_ids if o.strip()], "--grant-read", "")
        if not ids:
            return
        acl = ",".join(f"user:{oid}:r-x,default:user:{oid}:r-x" for oid in ids)
        self._apply_read_acl(folder_key, ids, acl, "--grant-read", replace=False)
        logger.info("granted read on %s to %d identities", self.describe(folder_key), len(ids))

    def set_readers(self, folder_key: str, object_ids: Iterable[str]) -> None:
        """Make ``folder_key`` (recursively) readable by its owner and the listed Entra object ids
        only: its ACLs are replaced by ``user::rwx``, ``r-x`` for each id and nothing for the owning
        group and others, the same as default ACLs so later files inherit them; each parent gets
        ``--x`` for the ids. No ids: owner only. Needs a hierarchical namespace."""
        ids = list(dict.fromkeys(o.strip().lower() for o in object_ids if o.strip()))  # one entry each
        ids = _object_ids(ids, "--reader", " on ADLS")
        named = "".join(f",user:{oid}:r-x" for oid in ids)
        mask = ",mask::r-x" if ids else ""
        access = f"user::rwx,group::---,other::---{mask}{named}"
        acl = access + "," + ",".join(f"default:{e}" for e in access.split(","))
        self._apply_read_acl(folder_key, ids, acl, "--reader", replace=True)
        logger.info("readers of %s: %d identities", self.describe(folder_key), len(ids))

    def _apply_read_acl(self, folder_key: str, ids: list[str], acl: str, flag: str, replace: bool) -> None:
        """Set (``replace``) or add ``acl`` recursively on ``folder_key`` and ``--x`` for ``ids`` on
        each parent up to the file system root, so the ids can traverse to it."""
        if not self.is_hns_enabled():
            raise StorageError(
                f"{flag} needs an account with a hierarchical namespace (ADLS Gen2); "
                f"{self.location.account} has none"
            )
        fs = self._datalake_file_system()
        path = self._name(folder_key)
        verb = "set the readers of" if replace else "grant read access on"
        with self._azure_errors(verb, folder_key):
            directory = fs.get_directory_client(path or "/")
            if replace:
                result = directory.set_access_control_recursive(acl=acl)
            else:
                result = directory.update_access_control_recursive(acl=acl)
            failures = result.counters.failure_count if result and result.counters else 0
            if failures:
                raise StorageError(
                    f"{flag} on {self.describe(folder_key)} failed for {failures} paths; the identity "
                    "may not own them (needs Storage Blob Data Owner or ownership); re-running is safe"
                )
            segments = path.split("/") if path else []
            for depth in range(len(segments)):
                parent = "/".join(segments[:depth]) or "/"
                client = fs.get_directory_client(parent)
                current = str(client.get_access_control().get("acl") or "")
                merged = merge_acl(current, {oid: "--x" for oid in ids})
                if merged != current:
                    client.set_access_control(acl=merged)

    # -- locking -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, key: str, seconds: int = 60) -> Iterator[Lease]:
        """Hold a blob lease on the (small, created on demand) lock blob ``key``.

        Raises :class:`LockBusy` when someone else holds it. The lease expires ``seconds``
        (15-60) after the last renewal, so a crashed holder frees it; call ``renew()`` on the
        yielded :class:`Lease` more often than that during long work."""
        if not 15 <= seconds <= 60:
            raise ValueError("a lease lasts 15 to 60 seconds")
        blob = self._blob(key)
        with self._azure_errors("lock", key):
            client = self._acquire(blob, key, seconds)
            with contextlib.suppress(HttpResponseError):  # who holds it, for a waiting run's message
                blob.set_blob_metadata({"holder": holder_text()}, lease=client)
        held = Lease(self, key, client, seconds)
        try:
            yield held
        finally:
            try:
                client.release()
            except AzureError as exc:
                logger.warning(
                    "could not release the lease on %s (it expires by itself): %s",
                    self.describe(key),
                    to_storage_error(exc, "release the lease on", self.describe(key)),
                )

    def lock_holder(self, key: str) -> str | None:
        """The lock blob's holder metadata while its lease is taken, None when it is free (or
        the blob does not exist). One read of its properties: the lease is never touched."""
        with self._azure_errors("read the properties of", key):
            try:
                props = self._blob(key).get_blob_properties()
            except ResourceNotFoundError:
                return None
        if str(props.lease.state) != "leased":
            return None
        return (props.metadata or {}).get("holder") or "holder unknown"

    @contextlib.contextmanager
    def lock(self, key: str, seconds: int | None = None) -> Iterator[Lease]:
        """A lease on a lock blob, renewed in the background while the block runs; a killed
        or frozen holder's lease expires after at most ``seconds`` (``INSIGHTS_LINK_LEASE_SECONDS``,
        default 30). The yielded :class:`Lease` tells, at each fenced step, whether it is still
        held."""
        if seconds is None:
            seconds = int(_env_number(ENV_LEASE_SECONDS, 30, integer=True))
        with self.lease(key, seconds) as held:
            stop = threading.Event()

            def renew() -> None:
                while not stop.wait(seconds / 4):
                    try:
                        held.renew()
                    except LockLost as exc:
                        logger.error("%s; this run will not commit", exc)
                        return
                    except StorageError as exc:  # keep trying: the next renewal may get through
                        logger.warning("could not renew the lock on %s: %s", self.describe(key), exc)

            thread = threading.Thread(target=renew, name="insights-link-lease", daemon=True)
            thread.start()
            try:
                yield held
            finally:
                stop.set()
                thread.join()

    def _acquire(self, blob: BlobClient, key: str, seconds: int) -> BlobLeaseClient:
        for _attempt in range(3):
            try:
                return blob.acquire_lease(lease_duration=seconds)
            except ResourceNotFoundError as exc:
                if _error_code(exc) == "ContainerNotFound":
                    self._create_container()
                with contextlib.suppress(ResourceExistsError):
                    blob.upload_blob(b"", overwrite=False)
            except HttpResponseError as exc:
                if _error_code(exc) == "LeaseAlreadyPresent":
                    holder = "holder unknown"
                    with contextlib.suppress(AzureError):
                        holder = (blob.get_blob_properties().metadata or {}).get("holder", holder)
                    raise LockBusy(
                        f"{self.describe(key)} is locked: another run holds its lease ({holder}; "
                        "a lease ends by itself at most 60 s after its holder stops)"
                    ) from exc
                raise
        raise StorageError(f"cannot create the lock blob {self.describe(key)}")
