"""The experiments on top of the library: the accuracy suites of ``resdist reproduce``
(:mod:`.suites`), their per-run records (:mod:`.records`), the paired statistics of their
reports (:mod:`.statistics`) and ``resdist demo`` (:mod:`.demo`). Only the command line imports
them; they never import it."""
