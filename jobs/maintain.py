"""spark-submit entry for the maintain stage; options as for `lakemine maintain --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/maintain.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("maintain", sys.argv[1:]))
