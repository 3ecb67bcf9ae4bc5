"""Accuracy evidence at the long budget on real Fashion-MNIST: ResNet-32 teacher vs plain-32 with
CE / KD / feature KD / JointRD (defaults and the setting chosen on validation) / Dirac JointRD,
all 60k training images, 3 epochs per run. Writes benchmarks/results/accuracy_long.{json,md,png}
and one record per finished run under benchmarks/results/runs/fashion-mnist-long/, reused by the
next invocation (on this machine or another), so the suite can be finished piecewise:

    python benchmarks/accuracy_long.py [--seeds 0 1 2] [--out runs/reproduce] [--set key=value ...]

Same as ``resdist reproduce fashion-mnist-long --results benchmarks/results``.
"""

import sys

from resdist.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "fashion-mnist-long", "--results", "benchmarks/results",
                   *sys.argv[1:]]))
