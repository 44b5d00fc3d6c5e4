"""spark-submit entry for the features stage; options as for `lakemine features --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/features.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("features", sys.argv[1:]))
