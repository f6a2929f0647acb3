"""Superseded by `bench/suite.py` (wrk-driven, every response verified, peers side by side); kept as an alias.

python bench/serve_bench.py --quick    # the same as: python bench/suite.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.suite import main

    main()
