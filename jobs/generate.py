"""spark-submit entry for the generate stage; options as for `lakemine generate --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/generate.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("generate", sys.argv[1:]))
