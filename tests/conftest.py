"""One torch thread in every test process, as the scripts' default (`--torch-threads 1`).

The networks in these tests are small, and the suite runs one worker per CPU core (`pytest -n auto`):
a second intra-op thread per worker adds no speed and spin-waits against the other workers. Subprocesses
inherit OMP_NUM_THREADS=1 unless the caller set it.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
