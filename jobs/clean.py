"""spark-submit entry for the clean stage; options as for `lakemine clean --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/clean.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("clean", sys.argv[1:]))
