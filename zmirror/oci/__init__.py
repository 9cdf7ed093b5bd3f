"""The registry vocabulary: error codes, the reference grammar, media types and
namespace names (no I/O, imports nothing else of ZMirror)."""
