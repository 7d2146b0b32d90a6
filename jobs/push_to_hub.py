"""``python -m jobs.push_to_hub``: the job declared in ``docrerank/hub/job.py`` (``--help`` describes it)."""

import sys

from docrerank.hub.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
