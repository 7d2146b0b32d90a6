"""``python -m jobs.evaluate``: the job declared in ``docrerank/eval/job.py`` (``--help`` describes it)."""

import sys

from docrerank.eval.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
