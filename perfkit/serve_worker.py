"""One cold start, in a fresh interpreter: import the runtime, load the model, call it once.

    python -c "$(cat perfkit/serve_worker.py)" KIND MODEL INPUTS.npz THREADS

``KIND``: ``onnx`` (ONNX Runtime alone: torch is never imported), ``aoti`` (an AOTInductor package),
``torch`` (a pickled ``nn.Module``) or ``torch_compile`` (the same, run under ``torch.compile``).
Prints one JSON line: seconds spent importing, loading and in the first call, and the process's peak
resident memory. It imports nothing of perfkit, so it measures what a serving process pays; run it as
its source (``python -c``), so neither perfkit's folder nor the working directory shadows a module.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def main(kind: str, model_path: str, inputs_path: str, threads: int) -> dict[str, Any]:
    started = time.perf_counter()
    import numpy as np

    arrays = np.load(inputs_path)
    feeds = [arrays[f"input_{i}"] for i in range(len(arrays.files))]
    if kind == "onnx":
        import onnxruntime as ort

        imported = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        loaded = time.perf_counter()
        session.run(None, dict(zip(names, feeds, strict=True)))
    else:
        import torch

        torch.set_num_threads(threads)
        imported = time.perf_counter()
        model: Any
        if kind == "aoti":
            model = torch._inductor.aoti_load_package(model_path)
        else:
            model = torch.load(model_path, weights_only=False)
            model = torch.compile(model) if kind == "torch_compile" else model
        loaded = time.perf_counter()
        with torch.inference_mode():
            model(*(torch.from_numpy(a) for a in feeds))
    called = time.perf_counter()
    return {
        "import_s": imported - started,
        "load_s": loaded - imported,
        "first_call_s": called - loaded,
        "peak_rss_mb": _peak_rss_kib() / 1024,
        "torch_imported": "torch" in sys.modules,
    }


def _peak_rss_kib() -> int:
    """This process's own high-water mark: ru_maxrss would report the launching process's, which
    Linux carries over a fork and exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))), flush=True)
