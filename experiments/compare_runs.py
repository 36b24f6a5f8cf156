"""Whether finished runs give the same results: summary, final table and metrics.

  python -m experiments.compare_runs BEFORE AFTER [BEFORE2 AFTER2 ...]

Each pair of workdirs is compared with ``workdir.run_differences``: summary.json without
its times and workdir path, every array of final_table.npz bitwise, every metrics.jsonl
record without its times. Prints one line per pair ("same" or its differences) and exits
0 when every pair is the same, 1 when one differs, 2 on bad arguments (an odd count, or
a directory without summary.json). Used to show that a change of code leaves the results
of the same seed unchanged.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from experiments.workdir import SUMMARY_FILE, run_differences


def compare(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str, list[str]]]:
    """``[(a, b, differences)]`` for each pair of finished workdirs."""
    return [(a, b, run_differences(a, b)) for a, b in pairs]


def main(argv: Sequence[str]) -> int:
    paths = list(argv)
    if not paths or len(paths) % 2:
        print("compare_runs: give pairs of workdirs: BEFORE AFTER [BEFORE2 AFTER2 ...]",
              file=sys.stderr)
        return 2
    missing = [p for p in paths if not os.path.isfile(os.path.join(p, SUMMARY_FILE))]
    if missing:
        print(f"compare_runs: not a finished run (no {SUMMARY_FILE}): {', '.join(missing)}",
              file=sys.stderr)
        return 2
    differ = False
    for a, b, diffs in compare(list(zip(paths[::2], paths[1::2]))):
        differ |= bool(diffs)
        print(f"{a} vs {b}: " + ("same" if not diffs else "; ".join(diffs)))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
