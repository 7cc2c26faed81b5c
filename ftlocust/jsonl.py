"""JSON-lines files written one flushed line per event: read back, torn last line skipped."""

from __future__ import annotations

import json
import os


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every line of the file, in order; a torn last line (the writer was killed) is skipped;
    [] when there is no file."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out
