"""Serve a GGUF model through llama.cpp's OpenAI-compatible server (xllamacpp) until interrupted.

Usage: python scripts/local_llm.py [GGUF] [--port 8080]   (default GGUF: .cache/models/smollm2.gguf, fetched by
scripts/fetch_test_llm.sh). Then: coderflow texts --generator llm --texts.llm.model local --texts.llm.base-url <printed URL>
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

import xllamacpp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="?", default=str(Path(__file__).parents[1] / ".cache/models/smollm2.gguf"))
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not Path(args.gguf).is_file():
        raise SystemExit(f"no GGUF file at {args.gguf}: run scripts/fetch_test_llm.sh or pass a .gguf path")
    params = xllamacpp.CommonParams()
    params.model.path = args.gguf
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = 2
    params.n_ctx = 4096
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    server = xllamacpp.Server(params)
    print(f"serving {args.gguf} at {server.listening_address}/v1 (Ctrl-C stops)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    del server


if __name__ == "__main__":
    main()
