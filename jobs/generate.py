"""spark-submit entry for the generate stage; options as for `lakemine generate --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.submit_args) jobs/generate.py --out data ...

`python -m lakemine.submit_args` prints the --jars (or --packages) and Delta --conf options.
"""

from __future__ import annotations

import sys

from lakemine.cli import main


def run(argv: list[str]) -> int:
    return main(["generate", *argv], submitted=True)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
