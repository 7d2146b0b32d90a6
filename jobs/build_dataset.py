"""``python -m jobs.build_dataset``: the job declared in ``docrerank/build/job.py`` (``--help`` describes it)."""

import sys

from docrerank.build.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
