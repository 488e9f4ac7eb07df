"""On-disk cache of endpoint responses, so a killed `r1ov formalize` resumes without repeating a request.

Key: sha256 of the canonical JSON of the request as sent — model, messages and sampling parameters — with each
``data:`` image URL replaced by the sha256 of its bytes (hashing a 5 MB base64 string per lookup is wasteful, and
the image hash is what identifies it). The endpoint URL is not part of the key: the same model behind another host
or port gives the same answer, so a run moved to another server still resumes.

Entries are ``DIR/ab/abcdef….json`` holding the response JSON. Each is written to a temporary file in the same
directory, flushed and fsynced, then renamed into place: a rename is atomic, so a SIGKILL leaves either the whole
entry or none (a stray ``*.tmp`` is ignored and cleaned on the next start). Only 200 responses are stored — an
HTTP error or a timeout is retried by the next run, which is what a user restarting after an outage wants.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import tempfile

_DATA_URL = "data:"


def _hash_images(value):
    """A copy of a messages structure with every data: URL replaced by ``sha256:<hex of its text>``."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "url" and isinstance(v, str) and v.startswith(_DATA_URL):
                out[k] = "sha256:" + hashlib.sha256(v.encode()).hexdigest()
            else:
                out[k] = _hash_images(v)
        return out
    if isinstance(value, list):
        return [_hash_images(v) for v in value]
    return copy.copy(value)


def request_key(body: dict) -> str:
    """The cache key of a chat-completions request body."""
    canon = json.dumps(_hash_images(body), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class ResponseCache:
    """``get(key)`` → the stored response dict or None; ``put(key, response)`` stores it atomically."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)
        for stale in glob.glob(os.path.join(root, "*", "*.tmp")):  # left by a killed run
            os.remove(stale)
        self.hits = 0
        self.stored = 0

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key + ".json")

    def get(self, key: str) -> dict | None:
        try:
            with open(self._path(key), encoding="utf-8") as f:
                out = json.load(f)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None  # damaged by something other than us (renames are atomic): ask again
        self.hits += 1
        return out

    def put(self, key: str, response: dict) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(response, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self.stored += 1

    def __len__(self) -> int:
        return len(glob.glob(os.path.join(self.root, "*", "*.json")))
