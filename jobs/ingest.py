"""``python -m jobs.ingest``: the job declared in ``docrerank/ingest/job.py`` (``--help`` describes it)."""

import sys

from docrerank.ingest.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
