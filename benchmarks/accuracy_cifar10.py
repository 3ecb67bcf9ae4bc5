"""Accuracy evidence on real CIFAR-10, the paper's data set: thin ResNet teacher vs its plain
counterpart with CE / Hinton KD / feature KD / JointRD (released defaults), on the packaged
``cifar10-suite`` preset. Writes benchmarks/results/accuracy_cifar10.{json,md,png} and one record
per finished run under benchmarks/results/runs/cifar10/, reused by the next invocation (on this
machine or another), so the suite can be finished piecewise:

    python benchmarks/accuracy_cifar10.py --data-dir DIR [--seeds 0 1 2] [--out runs/reproduce]

DIR holds ``cifar-10-batches-py/`` (the official python layout; ``--download`` in ``resdist
train`` fetches it). Same as ``resdist reproduce cifar10 --results benchmarks/results``.
"""

import sys

from resdist.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "cifar10", "--results", "benchmarks/results", *sys.argv[1:]]))
