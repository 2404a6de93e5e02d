"""The analyses behind `normprobe analyze`, one small module each.

``norms`` (Figure 3), ``buckets`` (Figure 4 left, and a generic per-bucket mean of any signal),
``ood`` (OOD metrics of every scorer), ``exemplars`` (highest/lowest-norm samples per class),
``human`` (CIFAR-N / CIFAR-10H vs norm). :mod:`normprobe.pipeline` runs them.
"""
