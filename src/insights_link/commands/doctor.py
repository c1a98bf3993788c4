"""``insights-link doctor``: check the link's prerequisites that can be checked from here.

One line per check (``ok``, ``FAIL``, ``skip`` or ``note`` and why): the lake reachable with the
current credentials (resolved like the export's), write access (a probe object under the
tool-owned ``_doctor/`` key, written conditionally and deleted again), the data-source name, the
profile source, the hierarchical namespace when ACLs will be set, local POSIX ACL support and the
readers, and the Customer Insights principal's access. Then reminders of what the data plane
can't show (region and tenant, admin rights, role assignments). Exit 0 when nothing failed, 1
when a check failed, 2 for a bad command line. A broken setup is one FAIL line, never a
traceback: a check that depends on a failed one is skipped, naming it. See docs/doctor.md.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import logging
import os
import pwd
import re
import stat
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from insights_link.commands.common import Clock, Parser
from insights_link.core.contract import DEFAULT_DATA_SOURCE, ContractError, check_name
from insights_link.core.paths import is_remote, split_remote
from insights_link.errors import InsightsLinkError, UsageError
from insights_link.pipeline.spec import BY_DEST
from insights_link.storage import Storage, StorageError, open_storage

logger = logging.getLogger(__name__)

DESCRIPTION = """Check the link's prerequisites that can be checked from here: the lake reachable
with the current credentials, write access (a probe under _doctor/, deleted again), the
data-source naming rule, the profile source (--profiles), the hierarchical namespace when
--reader/--grant-read will set ACLs on ADLS, POSIX ACL support and the readers on a local lake,
and the Customer Insights principal's access (--ci-principal). Then notes for what can't be
checked from the data plane. One line per check: ok, FAIL, skip or note. Exit 0 when nothing
failed, 1 when a check failed, 2 for a usage error. Writes nothing but its own probe."""

#: the tool-owned folder of the write probe, directly below the lake root
PROBE_FOLDER = "_doctor"
#: never written: a read of it tells whether the credentials may read (as export's check_output)
READ_PROBE_KEY = ".insights-link-probe"
#: the name of a write probe (``probe-<UTC stamp>-<12 hex>.txt``) and when a left one is stale
_PROBE_NAME = re.compile(r"probe-\d{8}T\d{6}Z-[0-9a-f]{12}\.txt")
STALE_PROBE_SECONDS = 3600
_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_PROFILE_FILES = (".csv", ".csv.gz", ".parquet")
#: what Customer Insights needs that no storage request can show (docs/doctor.md)
NOTES = (
    (
        "region_tenant",
        "the storage account must be in the same Azure region and Microsoft Entra tenant as the "
        "Customer Insights - Data environment (not visible from the data plane)",
    ),
    (
        "admin_rights",
        "whoever attaches the data source needs admin rights in Customer Insights - Data (and, to "
        "share profiles, in the environment that reads them)",
    ),
    (
        "role_assignment",
        "the Customer Insights service principal needs the Storage Blob Data Contributor role on the "
        "storage account or container (role assignments live in Azure RBAC, not in the lake)",
    ),
)


class DoctorFailed(InsightsLinkError):
    """At least one check failed (each was printed on its own line)."""

    status = "doctor_failed"


@dataclass
class Check:
    """One line of the report: what was checked, its outcome and why."""

    check: str
    status: str  # ok | fail | skip | note
    detail: str


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="insights-link doctor", description=DESCRIPTION, allow_abbrev=False)
    parser.add_argument(
        "--output",
        "--lake",
        dest="lake",
        required=True,
        metavar="LAKE_ROOT",
        help="the lake root: a folder or an abfss:// URL (as given to export --output)",
    )
    parser.add_argument(
        "--data-source",
        default=DEFAULT_DATA_SOURCE,
        metavar="NAME",
        help=f"the data-source folder whose name and access are checked (default {DEFAULT_DATA_SOURCE})",
    )
    parser.add_argument(
        "--profiles",
        metavar="PATH",
        help="the profile source share-profiles reads: a CDM folder, a Delta table, CSV/Parquet files",
    )
    parser.add_argument(
        "--reader",
        action="append",
        default=[],
        metavar="PRINCIPAL",
        help="a reader share-profiles will add: an Entra object id on ADLS, a local user or group "
        "(NAME, user:NAME, group:NAME) on a local lake (repeatable)",
    )
    parser.add_argument(
        "--grant-read",
        action="append",
        default=[],
        metavar="OBJECT_ID",
        help="an Entra object id export --grant-read will let read the data source (repeatable)",
    )
    parser.add_argument(
        "--ci-principal",
        metavar="OBJECT_ID",
        help="the Customer Insights service principal's Entra object id: check it may read the data source",
    )
    for dest in ("log_format", "quiet", "verbose"):
        o = BY_DEST[dest]
        if o.kind == "bool":
            parser.add_argument(o.flag, dest=dest, action="store_true", help=o.help)
        else:
            parser.add_argument(o.flag, dest=dest, choices=o.choices, metavar=o.metavar, help=o.help)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def run(argv: list[str], clock: Clock) -> tuple[dict, str]:
    """Run every check; returns the report and its lines when nothing failed, otherwise prints
    them and raises :class:`DoctorFailed` (exit 1)."""
    args = build_parser().parse_args(argv)
    remote = _check_usage(args)
    checks = Doctor(args, remote, clock).checks()
    failed = [c.check for c in checks if c.status == "fail"]
    report = {
        "lake": args.lake,
        "data_source": args.data_source,
        "ok": not failed,
        "failed": failed,
        "checks": [asdict(c) for c in checks],
    }
    summary = render(report)
    if failed:
        as_json = args.json or args.log_format == "json"
        print(json.dumps(report, sort_keys=True) if as_json else summary, flush=True)
        raise DoctorFailed(
            f"{len(failed)} check{'s' if len(failed) != 1 else ''} failed: {', '.join(failed)}"
        )
    return report, summary


def render(report: dict) -> str:
    """One line per check: ``ok   lake: reachable ...``."""
    return "\n".join(
        f"{c['status'].upper() if c['status'] == 'fail' else c['status']:<4} {c['check']}: {c['detail']}"
        for c in report["checks"]
    )


def check_location(value: str, flag: str) -> None:
    """Only local paths and Azure URLs (like the export's: ``s3://`` is not a local folder)."""
    if "://" in value and not is_remote(value):
        raise UsageError(
            f"{flag} {value!r}: {value.split('://', 1)[0]}:// is not supported; use a local path or an "
            "Azure URL (abfss://<fs>@<account>.dfs.core.windows.net/<path>)"
        )


def _check_usage(args: argparse.Namespace) -> bool:
    """Usage errors (exit 2) before any check: a malformed lake URL, object ids that are not
    GUIDs. Returns whether the lake is on Azure."""
    for flag, value in (("--output", args.lake), ("--profiles", args.profiles)):
        if value:
            check_location(value, flag)
        if value and is_remote(value):
            from insights_link.storage.azure import parse_url

            try:
                parse_url(value)  # the message never repeats a query string (a SAS)
            except StorageError as exc:
                raise UsageError(f"{flag}: {exc}") from None
    remote = is_remote(args.lake)
    ids = [("--grant-read", v) for v in args.grant_read]
    ids += [("--ci-principal", args.ci_principal)] if args.ci_principal is not None else []
    ids += [("--reader", v) for v in args.reader] if remote else []
    for flag, value in ids:
        if not _OBJECT_ID.match(value.strip()):
            raise UsageError(f"{flag} {value!r} is not an Entra object id (a GUID)")
    if not remote:
        for value in args.reader:
            kind, _, name = value.rpartition(":")
            if kind not in ("", "user", "group") or not name:
                raise UsageError(f"--reader {value!r}: expected NAME, user:NAME or group:NAME")
    return remote


class Doctor:
    """The checks, in order; each returns one :class:`Check` and never raises for a broken
    setup (a storage failure is the check's FAIL line)."""

    def __init__(self, args: argparse.Namespace, remote: bool, clock: Clock) -> None:
        self.args = args
        self.remote = remote
        self.clock = clock
        self.storage: Storage | None = None  # set once the lake is reachable
        self.written: str | None = None  # the probe key, while it exists
        self.name_ok = False
        self.namespace_failed = False  # the namespace check found none (ci_access then skips)
        self._made_folder = False  # doctor created the local _doctor folder (removed when empty)

    def checks(self) -> list[Check]:
        try:
            out = [self.lake(), self.write(), self.naming(), self.profiles(), self.namespace()]
            out += [self.posix_acl(), self.readers(), self.ci_access()]
        finally:  # also when interrupted: the probe never outlives the run
            self.remove_probe()
        if not self.remote:
            out.append(
                Check(
                    "adls_gen2",
                    "note",
                    "a local lake is for trying things out: Customer Insights - Data attaches ADLS Gen2 "
                    "with a hierarchical namespace only",
                )
            )
        out.extend(Check(name, "note", text) for name, text in NOTES)
        return out

    # -- the lake ------------------------------------------------------------------------------

    def lake(self) -> Check:
        """Reachable with the current credentials; says whether the data source exists yet."""
        if self.remote:
            return self._remote_lake()
        root = os.path.abspath(os.path.expanduser(self.args.lake))
        if os.path.islink(root) and not os.path.exists(root):
            return Check(
                "lake", "fail", f"{root} is a symbolic link to {os.readlink(root)}, which does not exist"
            )
        if not os.path.exists(root):
            return Check("lake", "fail", f"{root} does not exist")
        if not os.path.isdir(root):
            kind = "a named pipe (FIFO)" if stat.S_ISFIFO(os.stat(root).st_mode) else "a file"
            return Check("lake", "fail", f"{root} is {kind}, not a folder")
        if not os.access(root, os.R_OK | os.X_OK):
            return Check("lake", "fail", f"{root} cannot be read by this user")
        self.storage = open_storage(root)
        return Check("lake", "ok", f"{root} is a readable folder; {self._data_source_state()}")

    def _remote_lake(self) -> Check:
        try:
            storage = open_storage(self.args.lake)
            if not storage.file_system_exists():  # type: ignore[attr-defined]
                location = storage.location  # type: ignore[attr-defined]
                return Check(
                    "lake",
                    "fail",
                    f"the file system {location.file_system!r} does not exist in account "
                    f"{location.account!r} (Customer Insights attaches an existing container)",
                )
            storage.exists(READ_PROBE_KEY)  # a read below the root: may we read at all?
        except StorageError as exc:
            return Check("lake", "fail", str(exc))
        self.storage = storage
        source = getattr(storage, "credential_source", "")
        try:
            state = self._data_source_state()
        except StorageError as exc:
            return Check("lake", "fail", str(exc))
        return Check("lake", "ok", f"{storage.url} is reachable with {source}; {state}")

    def _data_source_state(self) -> str:
        assert self.storage is not None
        name = self.args.data_source
        if name in self.storage.folders(""):
            return f"its data source folder {name} exists"
        return f"no data source folder {name} yet (the first export creates it)"

    def write(self) -> Check:
        """Write a probe object under ``_doctor/`` (only if absent), read it back, delete it."""
        if self.storage is None:
            return Check("write", "skip", "the lake is not reachable")
        stamp = self.clock().strftime("%Y%m%dT%H%M%SZ")
        key = f"{PROBE_FOLDER}/probe-{stamp}-{uuid.uuid4().hex[:12]}.txt"
        data = f"insights-link doctor write probe {stamp}\n".encode()
        self._made_folder = not self.remote and not os.path.isdir(self.storage.describe(PROBE_FOLDER))
        stale = self._remove_stale_probes()
        try:
            self.storage.write_if(key, data, None)  # never overwrites anything
            self.written = key
            if self.storage.read_bytes(key) != data:
                return Check("write", "fail", f"{self.storage.describe(key)} read back different bytes")
        except (StorageError, OSError) as exc:
            detail = str(exc) if isinstance(exc, StorageError) else f"{exc.strerror}"
            self._tidy_local_folder()
            return Check("write", "fail", f"cannot write below {self.storage.describe()}: {detail}")
        left = f"; removed {stale} probe(s) a killed doctor left" if stale else ""
        return Check(
            "write",
            "ok",
            f"wrote and read {PROBE_FOLDER}/{key.rsplit('/', 1)[1]} (deleted at the end){left}",
        )

    def _remove_stale_probes(self) -> int:
        """Delete probes a killed doctor left (SIGKILL skips every cleanup): only files named
        like doctor's probes, and only when older than an hour, so a concurrent doctor's probe
        stays. Returns how many were deleted."""
        assert self.storage is not None
        removed = 0
        try:
            for obj in self.storage.list(PROBE_FOLDER):
                name = obj.key.rsplit("/", 1)[-1]
                old = (self.clock() - obj.modified).total_seconds() > STALE_PROBE_SECONDS
                if obj.key == f"{PROBE_FOLDER}/{name}" and _PROBE_NAME.fullmatch(name) and old:
                    self.storage.delete(obj.key)
                    removed += 1
        except (StorageError, OSError) as exc:
            logger.warning("could not remove old probes below %s: %s", PROBE_FOLDER, exc)
        return removed

    def remove_probe(self) -> None:
        """Delete the probe object doctor wrote (and, locally, the ``_doctor`` folder it made
        when empty): nothing else is ever deleted."""
        if self.storage is None or self.written is None:
            return
        try:
            self.storage.delete(self.written)
        except StorageError as exc:
            logger.warning("could not delete the probe %s: %s", self.storage.describe(self.written), exc)
        self.written = None
        self._tidy_local_folder()

    def _tidy_local_folder(self) -> None:
        if self.storage is not None and self._made_folder:
            with contextlib.suppress(OSError):
                os.rmdir(self.storage.describe(PROBE_FOLDER))  # only when empty

    # -- names and profiles --------------------------------------------------------------------

    def naming(self) -> Check:
        try:
            check_name(self.args.data_source, "--data-source")
        except ContractError as exc:
            return Check("naming", "fail", str(exc))
        self.name_ok = True
        return Check(
            "naming",
            "ok",
            f"--data-source {self.args.data_source!r} follows the naming rule (a letter, then letters, "
            "digits, underscores)",
        )

    def profiles(self) -> Check:
        """The profile source is reachable and looks like something share-profiles reads."""
        value = self.args.profiles
        if not value:
            return Check("profiles", "skip", "no --profiles given")
        try:
            return Check("profiles", "ok", _recognise_profiles(value))
        except ProfilesProblem as exc:
            return Check("profiles", "fail", f"--profiles {value}: {exc}")
        except StorageError as exc:
            return Check("profiles", "fail", f"--profiles: {exc}")

    # -- access control ------------------------------------------------------------------------

    def namespace(self) -> Check:
        """ACLs (--reader/--grant-read on ADLS) need a hierarchical namespace."""
        wanted = [f for f, v in (("--reader", self.args.reader), ("--grant-read", self.args.grant_read)) if v]
        if not self.remote:
            if self.args.grant_read:
                return Check(
                    "namespace",
                    "fail",
                    "--grant-read takes Entra object ids and needs an ADLS Gen2 lake; on a local lake "
                    "readers are local users or groups (--reader, POSIX ACLs)",
                )
            return Check("namespace", "skip", "a local lake: readers are POSIX ACLs (see posix_acl)")
        if not wanted:
            return Check("namespace", "skip", "no --reader or --grant-read given: no ACLs will be set")
        if self.storage is None:
            return Check("namespace", "skip", "the lake is not reachable")
        try:
            hns = self.storage.is_hns_enabled()  # type: ignore[attr-defined]
        except StorageError as exc:
            return Check("namespace", "fail", str(exc))
        account = self.storage.location.account  # type: ignore[attr-defined]
        self.namespace_failed = not hns
        if not hns:
            return Check(
                "namespace",
                "fail",
                f"account {account} has no hierarchical namespace: {' and '.join(wanted)} "
                f"set{'s' if len(wanted) == 1 else ''} ACLs, which "
                "need ADLS Gen2 (and Customer Insights attaches only ADLS Gen2)",
            )
        return Check("namespace", "ok", f"account {account} has a hierarchical namespace (ACLs can be set)")

    def posix_acl(self) -> Check:
        """A local --reader becomes POSIX ACLs: can this file system hold them?"""
        if self.remote:
            return Check("posix_acl", "skip", "an Azure lake: readers are ADLS ACLs (see namespace)")
        if not self.args.reader:
            return Check("posix_acl", "skip", "no --reader given: no ACLs will be set")
        if self.storage is None or self.written is None:
            return Check("posix_acl", "skip", "no probe file could be written (see lake and write)")
        why = self.storage.posix_acl_probe(self.written)  # type: ignore[attr-defined]
        if why:
            return Check("posix_acl", "fail", f"{why}: --reader can't be applied")
        return Check("posix_acl", "ok", f"the file system of {self.storage.describe()} holds POSIX ACLs")

    def readers(self) -> Check:
        """Local readers must be known users or groups (Entra ids can't be looked up from here)."""
        if not self.args.reader:
            return Check("readers", "skip", "no --reader given")
        if self.remote:
            return Check(
                "readers",
                "skip",
                f"{len(self.args.reader)} Entra object id(s), well formed; whether they exist in the tenant "
                "can't be checked from the data plane",
            )
        found, unknown = [], []
        for value in self.args.reader:
            kind, _, name = value.rpartition(":")
            resolved = _local_principal(kind, name)
            (found if resolved else unknown).append(resolved or value)
        if unknown:
            return Check("readers", "fail", f"no local user or group {', '.join(map(repr, unknown))}")
        return Check("readers", "ok", f"local principals: {', '.join(found)}")

    def ci_access(self) -> Check:
        """The Customer Insights principal may list and read the data-source folder (ACLs)."""
        oid = (self.args.ci_principal or "").strip().lower()
        if not oid:
            return Check("ci_access", "skip", "no --ci-principal given")
        if not self.remote:
            return Check(
                "ci_access",
                "skip",
                "a local lake: Customer Insights can't read it, so there is no principal access to check",
            )
        if self.storage is None:
            return Check("ci_access", "skip", "the lake is not reachable")
        if not self.name_ok:
            return Check("ci_access", "skip", "the --data-source name is not valid (see naming)")
        if self.namespace_failed:
            return Check("ci_access", "skip", "no hierarchical namespace, so no ACLs (see namespace)")
        try:
            if not self.storage.is_hns_enabled():  # type: ignore[attr-defined]
                return Check(
                    "ci_access",
                    "fail",
                    "no hierarchical namespace, so no ACLs to read; Customer Insights attaches ADLS Gen2 only",
                )
            return self._ci_acls(oid)
        except StorageError as exc:
            return Check("ci_access", "fail", str(exc))

    def _ci_acls(self, oid: str) -> Check:
        storage: Any = self.storage
        folder = self.args.data_source
        *parents, (_, acl) = storage.access_controls(folder)
        if acl is None:
            return Check(
                "ci_access",
                "fail",
                f"{storage.describe(folder)} does not exist yet: export with --grant-read {oid} creates and "
                "shares it",
            )
        problems = []
        for path, parent_acl in parents:
            if "x" not in effective_permissions(parent_acl or "", oid):
                where = "the file system root" if path == "/" else path
                problems.append(f"{where} does not let it traverse (needs --x)")
        if not _reads(effective := effective_permissions(acl, oid)):
            problems.append(f"{folder} grants it {effective} (needs r-x)")
        if not _reads(default := effective_permissions(acl, oid, default=True)):
            problems.append(f"{folder}'s default ACL grants it {default} (files written later need r-x)")
        if problems:
            return Check(
                "ci_access",
                "fail",
                f"object id {oid}: " + "; ".join(problems) + "; unless a group it belongs to or a role "
                "assignment (Storage Blob Data Reader or higher) grants it, which the data plane can't show. "
                f"export --grant-read {oid} sets these ACLs",
            )
        return Check("ci_access", "ok", f"object id {oid} may traverse to and read {folder} (ACLs)")


def _reads(perms: str) -> bool:
    return "r" in perms and "x" in perms


def effective_permissions(acl: str, oid: str, *, default: bool = False) -> str:
    """What the ACL lets ``oid`` do as ``rwx`` letters (``-`` for missing): its named user
    entry limited by the mask, else the ``other`` entry. Groups it belongs to are not known
    here. ``default=True`` reads the default ACL (what new children inherit)."""
    entries: dict[tuple[str, str], str] = {}
    for raw in acl.split(","):
        fields = raw.strip().split(":")
        is_default = fields[0] == "default"
        if is_default:
            fields = fields[1:]
        if len(fields) != 3 or is_default != default:
            continue
        entries[(fields[0], fields[1].lower())] = fields[2]
    named = entries.get(("user", oid.lower()))
    other = entries.get(("other", ""), "---")
    if named is None:
        return other
    mask = entries.get(("mask", ""), "rwx")
    masked = "".join(p if p != "-" and m != "-" else "-" for p, m in zip(named, mask, strict=False))
    return "".join(a if a != "-" else b for a, b in zip(masked, other, strict=False))


def _local_principal(kind: str, name: str) -> str | None:
    """``user:NAME`` / ``group:NAME`` of a local principal (a plain NAME: a user, else a group)."""
    lookups = []
    if kind in ("", "user"):
        lookups.append(("user", pwd.getpwuid if name.isdigit() else pwd.getpwnam))
    if kind in ("", "group"):
        lookups.append(("group", grp.getgrgid if name.isdigit() else grp.getgrnam))
    for label, lookup in lookups:
        try:
            lookup(int(name) if name.isdigit() else name)  # type: ignore[operator]
        except KeyError:
            continue
        return f"{label}:{name}"
    return None


class ProfilesProblem(Exception):
    """The profile source is missing or not something share-profiles reads."""


def _recognise_profiles(value: str) -> str:
    """What the profile source is (one line), or :class:`ProfilesProblem`: a CDM folder (a
    ``*.manifest.cdm.json`` or ``model.json`` with entities), a Delta table (``_delta_log``),
    or CSV/Parquet files. A light look: metadata is parsed, data files are only listed."""
    if is_remote(value):
        root, key = split_remote(value.rstrip("/"))
        storage = open_storage(root)
    else:
        path = os.path.abspath(os.path.expanduser(value))
        if not os.path.exists(path):
            raise ProfilesProblem("does not exist")
        root, key = os.path.dirname(path), os.path.basename(path)
        storage = open_storage(root)
    single = storage.info(key) if key else None
    if single is not None:
        name = key.rsplit("/", 1)[-1]
        if name == "model.json" or name.endswith(".manifest.cdm.json"):
            key = key.rsplit("/", 1)[0] if "/" in key else ""
        elif name.lower().endswith(_PROFILE_FILES):
            return f"a {'Parquet' if name.lower().endswith('.parquet') else 'CSV'} file ({single.size} bytes)"
        else:
            raise ProfilesProblem("is not a CSV or Parquet file, a model.json or a CDM manifest")
    prefix = f"{key}/" if key else ""
    names = [o.key[len(prefix) :] for o in storage.list(key)]
    if not names:
        raise ProfilesProblem("does not exist or holds no files")
    top = [n for n in names if "/" not in n]
    manifests = sorted(n for n in top if n.endswith(".manifest.cdm.json"))
    for meta in manifests + (["model.json"] if "model.json" in top else []):
        entities = _entities(storage, prefix + meta)
        return f"a CDM folder: {meta} with entities {', '.join(entities)}"
    logs = [n for n in names if n.startswith("_delta_log/") and n.endswith(".json")]
    if logs:
        versions = [int(v) for n in logs if (v := n.split("/")[1].split(".")[0]).isdigit()]
        return f"a Delta table (version {max(versions)})" if versions else "a Delta table"
    data = [n for n in names if n.lower().endswith(_PROFILE_FILES) and not n.startswith(("_", "."))]
    if data:
        kinds = sorted({"Parquet" if n.lower().endswith(".parquet") else "CSV" for n in data})
        return f"{len(data)} {'/'.join(kinds)} file{'s' if len(data) != 1 else ''}"
    raise ProfilesProblem(
        "holds no *.manifest.cdm.json, model.json, Delta log (_delta_log/) or CSV/Parquet files"
    )


def _entities(storage: Storage, key: str) -> list[str]:
    """The entity names a manifest or model.json declares; ProfilesProblem when it doesn't parse."""
    try:
        doc = json.loads(storage.read_bytes(key))
        entities = doc.get("entities") or []
        names = [str(e.get("entityName") or e.get("name") or "?") for e in entities]
    except (ValueError, AttributeError, TypeError) as exc:
        raise ProfilesProblem(f"{key.rsplit('/', 1)[-1]} is not a valid CDM document ({exc})") from None
    if not names:
        raise ProfilesProblem(f"{key.rsplit('/', 1)[-1]} declares no entities")
    return names
