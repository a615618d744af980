"""Benchmarks of diffjax against its peers (not part of the installed package; run from the
repository root: ``python -m bench NAME``, see ``bench/run.py``)."""
