"""``python -m jobs.rerank``: the job declared in ``docrerank/rerank/job.py`` (``--help`` describes it)."""

import sys

from docrerank.rerank.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
