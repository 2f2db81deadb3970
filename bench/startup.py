"""Start-up time of the command line: `reidctl --help` must not wait for torch.

    python bench/startup.py [--runs 10]

Each command runs in a fresh process `--runs` times (after one warm-up run, so the disk cache is
warm); the table gives the median wall time and the ratio to the floor, a bare `python -c pass`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "floor: python -c pass": [sys.executable, "-c", "pass"],
    "reidctl --version": [sys.executable, "-m", "reidctl", "--version"],
    "reidctl --help": [sys.executable, "-m", "reidctl", "--help"],
    "reidctl inspect --help (imports its command)": [sys.executable, "-m", "reidctl", "inspect", "--help"],
    "reidctl loop --help (imports torch)": [sys.executable, "-m", "reidctl", "loop", "--help"],
}


def wall(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, check=True, capture_output=True)  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    results = {name: wall(cmd, args.runs) for name, cmd in COMMANDS.items()}
    floor = results["floor: python -c pass"]
    print(f"# bench/startup.py ({args.runs} runs each, median wall time)")
    print("| command | s | / floor |")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| `{name}` | {seconds:.3f} | {seconds / floor:.1f} |")


if __name__ == "__main__":
    main()
