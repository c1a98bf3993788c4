"""pytest plugin with the Azurite fixtures (load it with ``pytest_plugins``).

- ``azurite`` (session): one stock Azurite on free loopback ports for the whole run, stopped
  at the end. It FAILS (does not skip) when Azurite is not installed: CI installs it, and a
  silently skipped Azure suite would hide a broken backend.
- ``azure_lake`` (function): a fresh, not yet created container on that Azurite, the
  environment pointing at it (``AZURE_STORAGE_CONNECTION_STRING``, short retries), and the
  lake URL ``abfss://<container>@devstoreaccount1.dfs.core.windows.net/lake``.

Also registers the ``azurite`` and ``live_adls`` markers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest.register_assert_rewrite("azurite")  # check_storage_contract's asserts

from azurite import (  # noqa: E402
    ACCOUNT,
    INSTALL_HINT,
    Azurite,
    AzuriteError,
    new_container_name,
)

logger = logging.getLogger(__name__)

CREDENTIAL_ENV = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")
# Enough to ride out a hiccup, short enough that a dead emulator fails a test in seconds.
TEST_RETRY_ENV = {
    "INSIGHTS_LINK_AZURE_RETRIES": "2",
    "INSIGHTS_LINK_AZURE_BACKOFF": "0.05",
    "INSIGHTS_LINK_AZURE_BACKOFF_MAX": "0.5",
    "INSIGHTS_LINK_AZURE_CONNECT_TIMEOUT": "5",
    "INSIGHTS_LINK_AZURE_READ_TIMEOUT": "30",
}


MARKERS = {
    "azurite": "needs the Azurite emulator (fixture azurite)",
    "live_adls": "runs against the real account in INSIGHTS_LINK_LIVE_ADLS_URL",
}


def pytest_configure(config: pytest.Config) -> None:
    known = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A running Azurite; ``stop()`` / ``start()`` simulate an outage (same ports, same data)."""
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    if not server.binary.exists():
        pytest.fail(
            f"Azurite is not installed at {server.binary}; install it with: {INSTALL_HINT}",
            pytrace=False,
        )
    try:
        server.start()
    except AzuriteError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def azure_lake(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> str:
    """URL of a lake in a fresh container on Azurite, with the environment set to reach it."""
    if not azurite.is_running:  # an earlier test stopped it and did not restart it
        logger.warning("restarting Azurite left stopped by an earlier test")
        azurite.start()
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in TEST_RETRY_ENV.items():
        monkeypatch.setenv(name, value)
    return f"abfss://{new_container_name()}@{ACCOUNT}.dfs.core.windows.net/lake"
