"""Accuracy evidence on real Fashion-MNIST: ResNet teacher vs plain CE / KD / feature KD /
JointRD, three seeds each. Writes benchmarks/results/accuracy.{json,md,png} and one record per
finished run under benchmarks/results/runs/fashion-mnist/ (reused by later invocations).

    python benchmarks/accuracy.py [--seeds 0 1 2] [--out runs/reproduce] [--set key=value ...]

Same as ``resdist reproduce fashion-mnist --results benchmarks/results``.
"""

import sys

from resdist.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "fashion-mnist", "--results", "benchmarks/results", *sys.argv[1:]]))
