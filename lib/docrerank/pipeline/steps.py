"""The jobs, as their packages declare them (``<package>/job.py``: ``JOB``): the pipeline's steps under the names
its config uses, in order (``STEPS``), and every job the ``docrerank`` command runs, in the order its help lists them
(``JOBS``). What a step runs, prints and lists is its job's declaration: nothing here is per job."""

from __future__ import annotations

from docrerank.analysis.job import JOB as ANALYSE
from docrerank.build.job import JOB as BUILD
from docrerank.core.job import Job
from docrerank.eval.job import JOB as EVALUATE
from docrerank.hub.job import JOB as PUSH
from docrerank.ingest.job import JOB as INGEST
from docrerank.mine.job import JOB as MINE
from docrerank.rerank.job import JOB as RERANK
from docrerank.train.job import JOB as TRAIN
from docrerank.viewer.job import JOB as VIEW

STEPS: dict[str, Job] = {"ingest": INGEST, "build": BUILD, "mine": MINE, "analyse": ANALYSE, "train": TRAIN,
                         "evaluate": EVALUATE}
JOBS: dict[str, Job] = {j.name: j for j in (INGEST, BUILD, VIEW, MINE, ANALYSE, TRAIN, EVALUATE, RERANK, PUSH)}
