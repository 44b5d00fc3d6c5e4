"""spark-submit entry for the recommend stage; options as for `lakemine recommend --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/recommend.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("recommend", sys.argv[1:]))
