"""spark-submit entry for the train stage; options as for `lakemine train --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/train.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:]))
