"""``python -m jobs.analyse_negatives``: the job declared in ``docrerank/analysis/job.py`` (``--help`` describes it)."""

import sys

from docrerank.analysis.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
