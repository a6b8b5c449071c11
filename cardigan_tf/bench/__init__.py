"""Benchmarks: scripts that print figures (never timed tests).

``python -m cardigan_tf.bench {pipeline,gan,seg} [options]``; each sub-module declares
``add_arguments(parser)`` and ``run(args)``. Record figures in docs/benchmarks.md.
"""
