"""What a serving engineer asks first, for every candidate under the same conditions.

- **cold start**: a fresh process imports its runtime, loads the model and answers one call
  (``perfkit/serve_worker.py``; peak resident memory of that process too);
- **batch-1 latency** p50/p90/p99 and **throughput** at a batch size, in one process, all candidates
  interleaved call by call, so a busy moment of the machine hits them alike;
- optionally **tail latency under load**: N threads calling batch-1 at once, candidate by candidate;
- the file's size and the held-out accuracy the caller measured.

``ServeReport`` is data first (``to_dict``/``save``: serve.json), then ``serve.md`` and ``serve.png``
(batch-1 p50 latency against accuracy).
"""

from perfkit.serving.benchmark import serve_benchmark
from perfkit.serving.candidate import KINDS, Candidate
from perfkit.serving.cold_start import COLD_START_TIMEOUT_S
from perfkit.serving.report import ServeReport, ServeRow, _table

__all__ = [
    "COLD_START_TIMEOUT_S",
    "KINDS",
    "Candidate",
    "ServeReport",
    "ServeRow",
    "_table",
    "serve_benchmark",
]
