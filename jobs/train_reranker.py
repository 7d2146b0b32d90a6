"""``python -m jobs.train_reranker``: the job declared in ``docrerank/train/job.py`` (``--help`` describes it)."""

import sys

from docrerank.train.job import JOB

main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
