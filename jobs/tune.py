"""spark-submit entry for the tune stage; options as for `lakemine tune --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/tune.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("tune", sys.argv[1:]))
