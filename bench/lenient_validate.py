"""Validation time of a 2 MB vendor spec with 300 defects in parts its connector does not
use (tests/fixtures/vendor_spec_maker.py): ``check_connector`` as ``bss-sync validate``
runs it, the first time in the process (imports included) and warm. Prints figures;
asserts nothing.

    .venv/bin/python bench/lenient_validate.py [--target-bytes N] [--defects N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.connector import check_connector
from tests.fixtures.vendor_spec_maker import defective_spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-bytes", type=int, default=2_000_000)
    parser.add_argument("--defects", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "everything.json"
        path.write_text(json.dumps(defective_spec(args.target_bytes, args.defects), indent=2))
        wall, cpu = [], []
        for _ in range(args.rounds + 1):
            started, started_cpu = time.perf_counter(), time.process_time()
            document, problems = check_connector(path)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        warnings = sum(p.severity == "warning" for p in problems)
        print(f"{path.stat().st_size / 1e6:.2f} MB, {warnings} warnings, "
              f"{'loads' if document is not None else 'INVALID'}")
        print(f"first check (imports included): {wall[0]:.2f} s wall, {cpu[0]:.2f} s CPU")
        print(f"warm, median of {args.rounds}: {statistics.median(wall[1:]):.2f} s wall, "
              f"{statistics.median(cpu[1:]):.2f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
