"""spark-submit entry for any stage from the installed package (no checkout needed):

    spark-submit $(python -m lakemine.orchestration.submit) --py-files lakemine.zip \\
        <site-packages>/lakemine/job.py STAGE --lake LAKE [options]

STAGE and its options are as for `lakemine STAGE --help`; the repository's `jobs/<stage>.py`
shells do the same for one stage each.
"""

from __future__ import annotations

import sys


def run(stage: str, argv: list[str]) -> int:
    """Run `lakemine STAGE argv...` in a session whose master, memory and jars came from spark-submit."""
    from lakemine.cli import main

    return main([stage, *argv], submitted=True)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print("usage: spark-submit .../lakemine/job.py STAGE [options]  (see lakemine --help)", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1], sys.argv[2:]))
