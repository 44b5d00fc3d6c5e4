"""Print the spark-submit options that put Delta on the classpath and give the JVMs
`spark.java_options`: `python -m lakemine.orchestration.submit`.

    spark-submit $(python -m lakemine.orchestration.submit) jobs/clean.py --lake lake
"""

from __future__ import annotations

import shlex
import sys

from lakemine.core.config import load_config
from lakemine.core.errors import UsageError
from lakemine.orchestration.jars import submit_args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[argv.index("--config") + 1] if "--config" in argv else None
    try:
        print(" ".join(shlex.quote(a) for a in submit_args(load_config(path))))
    except UsageError as exc:
        print(f"lakemine.submit_args: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
