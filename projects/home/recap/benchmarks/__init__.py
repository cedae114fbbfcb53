"""The benchmarks of the `recap benchmark ...` commands (commands/benchmark*.py parse the options and call them).

- throughput.py: `recap benchmark`, throughput and MFU per config against the machine's matmul peak; the figures of
  one config phase by phase in config_benchmark.py, the multi-rank figure in multi_rank.py, the temporary data in
  the config's schema in schema_data.py;
- compile.py: eager against compiled, task towers grouped or one by one (in `recap benchmark`, and the dense model
  alone: `python -m projects.home.recap.benchmarks.compile`);
- history.py: `recap benchmark history`; eval_memory.py: `recap benchmark eval-memory`;
- ids/: `recap benchmark ids`, our model against a plain-PyTorch reference on id-heavy data;
- timing.py and reporting.py: what they share (timing windows taken in turns, rates, MFU, tables, the JSON output,
  log levels).
"""
