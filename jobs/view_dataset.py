"""``python -m jobs.view_dataset``: the job declared in ``docrerank/viewer/job.py`` (``--help`` describes it)."""

import sys

from docrerank.viewer.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
