"""One cold start, in a fresh interpreter: import the runtime, load the model, call it once.

    python -c "$(cat perfkit/serve_worker.py)" KIND MODEL INPUTS.npz THREADS [DEVICE]

``KIND``: ``onnx`` (ONNX Runtime alone: torch is never imported), ``aoti`` (an AOTInductor package),
``torch`` (a pickled ``nn.Module``) or ``torch_compile`` (the same, run under ``torch.compile``).
``DEVICE``: ``cpu`` (the default) or ``cuda``: the inputs go there, ONNX Runtime takes its CUDA
provider when it has one, and the first call is waited for. Prints one JSON line: seconds spent
importing, loading and in the first call, and the process's peak resident memory (and peak CUDA
memory). It imports nothing of perfkit, so it measures what a serving process pays; run it from its
source (``python -c``), so neither perfkit's folder nor the working directory shadows a module.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def main(kind: str, model_path: str, inputs_path: str, threads: int, device: str = "cpu") -> dict[str, Any]:
    started = time.perf_counter()
    import numpy as np

    arrays = np.load(inputs_path)
    feeds = [arrays[f"input_{i}"] for i in range(len(arrays.files))]
    result: dict[str, Any] = {}
    if kind == "onnx":
        import onnxruntime as ort

        imported = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(model_path, options, providers=providers)
        result["provider"] = session.get_providers()[0]
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
            model = torch.load(model_path, weights_only=False, map_location=device).eval()
            model = torch.compile(model) if kind == "torch_compile" else model
        loaded = time.perf_counter()
        with torch.inference_mode():
            model(*(torch.from_numpy(a).to(device) for a in feeds))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    called = time.perf_counter()
    return {
        "import_s": imported - started,
        "load_s": loaded - imported,
        "first_call_s": called - loaded,
        "peak_rss_mb": _peak_rss_kib() / 1024,
        "torch_imported": "torch" in sys.modules,
        **result,
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
    arguments = sys.argv[1:]
    print(
        json.dumps(main(arguments[0], arguments[1], arguments[2], int(arguments[3]), *arguments[4:5])),
        flush=True,
    )
