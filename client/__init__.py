"""What users import: the streaming client (gRPC, HTTP) and audio loading.

    from mtasr.client import StreamingClient, StreamError, load_audio

The subcommands `mtasr transcribe`, `mtasr score` and `mtasr demo` live beside it (transcribe, score,
demo), with the transcript formats (formats) and the one resampler (audio.resample, resample_blocks).
"""

from mtasr.client.audio import load_audio
from mtasr.client.stream import StreamError, StreamingClient, Transcript, Update

__all__ = ["StreamingClient", "StreamError", "Transcript", "Update", "load_audio"]
