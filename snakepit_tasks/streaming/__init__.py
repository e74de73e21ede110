"""Streaming calls: chunks travel through a Redis stream per call, in order, replayable."""
