"""Plain Beam launcher: ``python pipelines/export_events.py --input ... --output ...``.

The form remote runners expect (Dataflow, Flink, Spark via the portable runner). Arguments are
the same as ``insights-link export``.
"""

import sys

from insights_link.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
