"""The only package that imports llama_cpp, and only lazily, so `edgellm --help`, `detect` and
`profiles` never pay for loading the native library.

types (what generation takes and gives) < native (importing llama.cpp, pinning cores,
quantizing) < rpc (workers) < backend (one llama.cpp context as the scheduler sees it) < batch
(the scheduler) < engine (a loaded model) < batched_bench, response, protocol.
"""
