"""What the viewer needs of the trace reader (collector/tracereader.py, the
one reader of traces): whether a trace can be shown, its first packets."""

from gpuscope.collector.tracereader import TraceError, check, file_size, read_head

__all__ = ["TraceError", "check", "file_size", "read_head"]
