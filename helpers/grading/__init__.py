"""Parts of the instructor's grader (``python -m helpers.grade``).

- :mod:`helpers.grading.integrity`: snapshot of torch's, the checker's and the reference's
  callables and constants, verified after the learner's file loads and after every check.
- :mod:`helpers.grading.sandbox`: what the worker process does to itself before a learner's
  code runs (memory/core/file limits, one thread, no network, no subprocesses).
- :mod:`helpers.grading.submissions`: a class's submission folder -> one folder per learner
  (zips extracted safely).
- :mod:`helpers.grading.forkserver`: a server with torch and the checks imported that forks
  one worker per (learner, lab), and the FIFO drain of a worker's output.
- :mod:`helpers.grading.outputs`: ``grades.csv``, ``grades.json``, ``feedback/<learner>.md``.

The design is explained in :mod:`helpers.grade`'s docstring.
"""
