"""Beam's own options: which arguments Beam knows, and whether the chosen runner can run here.

Strictness lives here, in one place: an argument neither insights-link nor Beam knows (a typo,
or a glob the shell expanded into extra words) is a usage error instead of being ignored with
a warning, as Beam would do.
"""

from __future__ import annotations

import argparse
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from insights_link.errors import UsageError

BEAM_OPTIONS_DOC = "https://beam.apache.org/releases/pydoc/current/apache_beam.options.pipeline_options.html"


class _Collector(argparse.ArgumentParser):
    """A plain parser that also takes the value-provider arguments Beam's option classes add."""

    def add_value_provider_argument(self, *args: Any, **kwargs: Any) -> None:
        self.add_argument(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def _register_optional_runner_options() -> None:
    """Import the option classes of runners whose extras may be missing (DaskRunner's
    ``--dask_client_address`` lives in its runner module), so the strict check knows them."""
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers DaskOptions
    except ImportError:  # dask not installed: its arguments stay unknown, --runner DaskRunner says why
        pass


def _option_classes(cls: type = PipelineOptions) -> list[type]:
    found: list[type] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_option_classes(sub))
    return found


def unknown_beam_arguments(args: list[str]) -> list[str]:
    """The arguments in ``args`` that no Beam option class declares."""
    if not args:
        return []
    _register_optional_runner_options()
    parser = _Collector(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    for cls in _option_classes():
        cls._add_argparse_args(parser)  # the documented hook every PipelineOptions subclass defines
    _known, unknown = parser.parse_known_args(args)
    return unknown


#: runners Beam's registry lacks, by the short names people type (lowercase) -> dotted path
_SHORT_NAMES = {
    "daskrunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
    "dask": "apache_beam.runners.dask.dask_runner.DaskRunner",
}


def check_runner(options: PipelineOptions) -> None:
    """A runner Beam doesn't know, or one whose extras aren't installed, is a usage error."""
    from apache_beam.runners.runner import create_runner

    name = options.view_as(StandardOptions).runner
    if isinstance(name, str) and name.lower() in _SHORT_NAMES:
        # Beam knows DaskRunner only by its dotted path; the short name is the documented one
        name = options.view_as(StandardOptions).runner = _SHORT_NAMES[name.lower()]
    if isinstance(name, str) and name.endswith("DaskRunner"):
        _spread_dask_elements(options)
    if name is None or not isinstance(name, str):
        problems = _direct_and_portable_errors(options, "")
        if problems:
            raise UsageError("; ".join(problems))
        return
    try:
        runner = create_runner(name)
    except ValueError as exc:
        raise UsageError(
            f"--runner {name!r} is not a runner Beam knows ({str(exc).splitlines()[0][:160]})"
        ) from None
    except ImportError as exc:
        extra = "gcp" if "dataflow" in name.lower() else "the runner's extras"
        raise UsageError(f"--runner {name} can't start here: {exc} (install apache-beam[{extra}])") from None
    except Exception as exc:  # noqa: BLE001 - a dotted path to something that isn't a runner
        raise UsageError(f"--runner {name!r} is not a runner ({type(exc).__name__}: {exc})"[:300]) from None
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    errors = PipelineOptionsValidator(options, runner).validate()
    errors += _direct_and_portable_errors(options, name)
    if errors:
        problems = "; ".join(" ".join(e.split()) for e in errors)
        raise UsageError(f"--runner {name}: its options are incomplete: {problems[:400]}")


def _spread_dask_elements(options: PipelineOptions) -> None:
    """One input file per ``dask.Bag`` partition unless ``--dask_npartitions`` or
    ``--dask_partition_size`` says otherwise. Beam 2.77's DaskRunner puts up to 128 created
    elements in one partition, and its GroupByKey (so every Reshuffle) keeps the partition count:
    a run of a few files would run on one worker."""
    try:
        from apache_beam.runners.dask.dask_runner import DaskOptions
    except ImportError:
        return
    dask = options.view_as(DaskOptions)
    if dask.npartitions is None and dask.partition_size is None:
        dask.partition_size = 1


def _direct_and_portable_errors(options: PipelineOptions, runner: str) -> list[str]:
    """What Beam's validator leaves to run time for the runners people use here."""
    from apache_beam.options.pipeline_options import DirectOptions, PortableOptions

    errors = []
    workers = options.view_as(DirectOptions).direct_num_workers
    if workers is not None and workers < 0:
        errors.append(f"--direct_num_workers {workers} must be 0 (all cores) or more")
    if runner.lower() in ("portablerunner", "portable") and not options.view_as(PortableOptions).job_endpoint:
        errors.append("PortableRunner needs --job_endpoint=host:port (a running job service)")
    return errors
