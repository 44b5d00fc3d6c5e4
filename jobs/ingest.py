"""spark-submit entry for the ingest stage; options as for `lakemine ingest --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/ingest.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("ingest", sys.argv[1:]))
