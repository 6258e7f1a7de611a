"""Command-line entry points (``miro-data``, ``miro-generate``, ...): parse, call the library, print."""
