"""Text embeddings computed ahead of time, shared between jobs with the same prompt.

The look-ahead encodes the prompts of the next queued jobs in one visit of the
17.6 GB text encoder; each job holds references to the texts it needs, and an
embedding is dropped as soon as no waiting job needs it (cancel releases too).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class EmbeddingCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tensors: dict[str, Any] = {}
        self._refs: Counter[str] = Counter()
        self._holders: dict[object, list[str]] = {}

    def has(self, text: str) -> bool:
        with self._lock:
            return text in self._tensors

    def put(self, text: str, tensor: Any) -> None:
        with self._lock:
            self._tensors[text] = tensor

    def get(self, text: str) -> Any:
        with self._lock:
            return self._tensors[text]

    def hold(self, holder: object, texts: list[str]) -> None:
        """Record that `holder` (a job) will need these texts; they stay until released."""
        with self._lock:
            if holder in self._holders:
                return
            unique = list(dict.fromkeys(texts))
            self._holders[holder] = unique
            self._refs.update(unique)

    def release(self, holder: object) -> None:
        """The job finished or was cancelled: drop what nobody else needs."""
        with self._lock:
            for text in self._holders.pop(holder, []):
                self._refs[text] -= 1
                if self._refs[text] <= 0:
                    del self._refs[text]
                    self._tensors.pop(text, None)

    def drop_unheld(self) -> None:
        """Forget embeddings no job holds (after an ad-hoc generation)."""
        with self._lock:
            for text in [t for t in self._tensors if self._refs[t] <= 0]:
                del self._tensors[text]

    def __len__(self) -> int:
        with self._lock:
            return len(self._tensors)
