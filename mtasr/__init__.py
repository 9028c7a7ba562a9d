"""Streaming multi-talker ASR served by Triton: the shared runtime core.

Modules here depend on numpy only, so Triton python-backend models, the export step, the
clients and the tests all share one implementation of each piece of the pipeline.
"""

from pathlib import Path

__version__ = "0.1.0"
# A three-speaker conversation shipped with the package: the demo's audio, and what an export times its stages on.
DEMO_CONVERSATION = Path(__file__).resolve().parent / "data" / "demo_conversation.flac"
