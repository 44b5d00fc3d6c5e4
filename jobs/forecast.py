"""spark-submit entry for the forecast stage; options as for `lakemine forecast --help`.

    .venv/bin/spark-submit $(.venv/bin/python -m lakemine.orchestration.submit) jobs/forecast.py --lake lake ...
"""

import sys

from lakemine.job import run

if __name__ == "__main__":
    sys.exit(run("forecast", sys.argv[1:]))
