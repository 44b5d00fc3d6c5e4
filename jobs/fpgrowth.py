"""spark-submit entry for the fpgrowth stage; options as for `lakemine fpgrowth --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/fpgrowth.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("fpgrowth", sys.argv[1:]))
