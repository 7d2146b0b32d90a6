"""``python -m jobs.mine_negatives``: the job declared in ``docrerank/mine/job.py`` (``--help`` describes it)."""

import sys

from docrerank.mine.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
