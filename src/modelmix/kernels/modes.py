"""Sparsifier modes of the compiled task-vector kernels (``gta_apply``, ``l1_sums``): one number per model
saying how its task vector is masked. The same values as the ``enum`` in ``ckernels.c``; ``fused.py``
compiles them in as constants. A module of its own that imports nothing, so that ``fused`` need not import
``backend``, which imports the backends."""

DENSE, TOPK, BAND, ZERO, RANDOM = 0, 1, 2, 3, 4
