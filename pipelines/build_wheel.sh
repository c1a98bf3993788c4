#!/bin/sh
# Build this package as a wheel into dist/ for --extra_package or a custom SDK container.
set -e; cd "$(dirname "$0")/.." && python -m pip wheel --no-deps -w dist . && ls dist/insights_link-*.whl
