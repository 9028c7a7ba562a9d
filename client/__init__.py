"""Streaming clients (gRPC, HTTP), the transcribe command and scoring."""
