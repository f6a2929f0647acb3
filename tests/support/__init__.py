"""What tests and benchmarks use and production never does: tiny checkpoints to serve, and a real server.

- `builtin_checkpoint`: a tiny random built-in checkpoint;
- `hf_checkpoints`: tiny random Hugging Face checkpoints of every family we serve
  (`python -m tests.support.hf_checkpoints OUT_DIR` writes them all);
- `server`: test images, and `ServerProcess`, the service in a subprocess on a free port.

They live here, not in `model/` or `service/`, so that the installed package holds only production code.
"""
