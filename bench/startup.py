"""Start-up time of the command line: no `--help` may wait for torch.

    python bench/startup.py [--runs 10] [--live]

Each command runs in a fresh process `--runs` times (after one warm-up run, so the disk cache is
warm); the table gives the median wall time, its ratio to the floor (a bare `python -c pass`), and
the median CPU time (user + system) of the process, which a busy machine inflates far less.
`reidctl --help` is printed from the command table, `reidctl COMMAND --help` from the help
manifest (reidctl/cli/help.py); `--live` adds a help that imports its command (and torch with
it), for comparison.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

from reidctl.cli import COMMANDS as CLI_COMMANDS  # the command table: imports no command

REIDCTL = [sys.executable, "-m", "reidctl"]
COMMANDS = {
    "floor: python -c pass": [sys.executable, "-c", "pass"],
    "reidctl --version": [*REIDCTL, "--version"],
    "reidctl --help": [*REIDCTL, "--help"],
    **{f"reidctl {name} --help": [*REIDCTL, name, "--help"] for name in CLI_COMMANDS},
}
LIVE = {"reidctl loop --json --help (imports its command, and torch)": [*REIDCTL, "loop", "--json", "--help"]}


def timed(cmd: list[str], runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of ``cmd`` in a fresh process."""
    subprocess.run(cmd, check=True, capture_output=True)  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--live", action="store_true", help="also time a help that imports its command")
    args = ap.parse_args()
    commands = {**COMMANDS, **(LIVE if args.live else {})}
    results = {name: timed(cmd, args.runs) for name, cmd in commands.items()}
    floor = results["floor: python -c pass"][0]
    print(f"# bench/startup.py ({args.runs} runs each, medians)")
    print("| command | wall s | / floor | CPU s |")
    print("|---|---|---|---|")
    for name, (seconds, cpu) in results.items():
        print(f"| `{name}` | {seconds:.3f} | {seconds / floor:.1f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
