"""`make gpu-check`: one prepared command that checks the ranker on a single-GPU machine in under 8 minutes.

runner.py probes for CUDA (none: it says "no CUDA device" and exits 0), then runs each stage of STAGES in its own
time-boxed subprocess (stage.py), so a hang, a CUDA error or an out-of-memory in one stage is recorded and the others
still run. Stages: the environment, the matmul peak (gpu.py), dense training throughput and MFU, the evaluator's
metrics on GPU outputs, an export scored on CPU (dense.py, checks.py), the CUDA-marked tests, and, where torchrec and
fbgemm-gpu import, sharded training with each sparse optimizer, resume and evaluation (sparse.py). Results go to
summary.json. Only torch is imported before the probe; the dense stages never import torchrec or fbgemm.
"""
