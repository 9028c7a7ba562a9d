"""Streaming multi-talker ASR served by Triton: the shared runtime core.

Modules here depend on numpy only, so Triton python-backend models, the export step, the
clients and the tests all share one implementation of each piece of the pipeline.
"""

__version__ = "0.1.0"
