"""spark-submit entry for the report stage; options as for `lakemine report --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.submit_args) jobs/report.py --lake lake

`python -m lakemine.submit_args` prints the --jars (or --packages) and Delta --conf options.
"""

from __future__ import annotations

import sys

from lakemine.cli import main


def run(argv: list[str]) -> int:
    return main(["report", *argv], submitted=True)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
