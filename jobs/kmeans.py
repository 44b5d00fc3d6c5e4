"""spark-submit entry for the kmeans stage; options as for `lakemine kmeans --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/kmeans.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("kmeans", sys.argv[1:]))
