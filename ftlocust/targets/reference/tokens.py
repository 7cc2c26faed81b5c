"""Deterministic tokens: token i of a request is a pure function of (seed, i).

Every token is one space followed by one pseudo-word from a fixed vocabulary, so a client can
join any chunking of a stream and split it back into tokens. A stream that was migrated to
another worker continues at index = tokens already generated; `check_continuity` proves the
seam has no gap, duplicate or foreign token. Plain Python, no I/O: the load users import it.
"""

from __future__ import annotations

import hashlib

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70 syllables
VOCAB_SIZE = 2048
_GRID = len(_SYLLABLES) ** 2  # 4900 two-syllable words
_STRIDE = 2393  # coprime with 4900: i -> i*_STRIDE mod 4900 visits distinct words

VOCAB: tuple[str, ...] = tuple(
    _SYLLABLES[(i * _STRIDE) % _GRID // len(_SYLLABLES)] + _SYLLABLES[(i * _STRIDE) % _GRID % len(_SYLLABLES)]
    for i in range(VOCAB_SIZE)
)
TOKEN_TEXTS: tuple[str, ...] = tuple(" " + w for w in VOCAB)

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a fast, stable (process-independent) 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def token_id(seed: int, index: int) -> int:
    """Vocabulary index of token `index` (0-based) of the request seeded with `seed`."""
    return _mix64(_mix64(seed & _MASK64) ^ (index & _MASK64)) % VOCAB_SIZE


def token_text(seed: int, index: int) -> str:
    """Text of token `index` of the request seeded with `seed`: " " + pseudo-word."""
    return TOKEN_TEXTS[token_id(seed, index)]


def seed_for(prompt: str) -> int:
    """The seed a worker uses when the request body carries no integer "seed" field.

    For chat requests `prompt` is `chat_prompt_text(messages)`.
    """
    return int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def chat_prompt_text(messages: list) -> str:
    """The prompt text a chat request is rendered to (seeding and token counting use it)."""
    lines = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        lines.append(f"{m.get('role', 'user')}: {content or ''}")
    return "\n".join(lines)


def count_prompt_tokens(prompt: str) -> int:
    """Prompt length in tokens: whitespace-separated words (at least 1), like the output tokens."""
    return max(1, len(prompt.split()))


def split_tokens(texts: list[str]) -> list[str]:
    """Split any chunking of a stream's texts back into tokens (" word" each)."""
    joined = "".join(t for t in texts if t)
    if not joined:
        return []
    parts = joined.split(" ")
    head, rest = parts[0], parts[1:]
    tokens = [" " + p for p in rest]
    if head:  # text before the first space is not a token of ours: keep it so it mismatches
        tokens.insert(0, head)
    return tokens


def check_continuity(seed: int, texts: list[str], expected: int | None = None) -> str:
    """"ok" if `texts` (chunk texts in order, any chunking) are tokens 0..n-1 of `seed`.

    Otherwise a short description of the first problem: a gap (tokens skipped), a duplicate
    (tokens repeated, e.g. a migration that restarted too early), a mismatch, or a count other
    than `expected`.
    """
    tokens = split_tokens(texts)
    n = len(tokens)
    for i, tok in enumerate(tokens):
        if tok == token_text(seed, i):
            continue
        return _describe_break(seed, tokens, i)
    if expected is not None and n != expected:
        return f"count: got {n} tokens, expected {expected}"
    return "ok"


def _describe_break(seed: int, tokens: list[str], i: int, max_shift: int = 64) -> str:
    """Classify the first wrong token at position i by finding the shift that explains it."""
    window = tokens[i : i + 4]

    def fits(start: int) -> bool:
        return start >= 0 and all(t == token_text(seed, start + j) for j, t in enumerate(window))

    for shift in range(1, max_shift + 1):
        if fits(i + shift):
            return f"gap at token {i}: {shift} token(s) missing"
        if fits(i - shift):
            return f"duplicate at token {i}: {shift} token(s) repeated"
    return f"mismatch at token {i}: got {tokens[i]!r}, expected {token_text(seed, i)!r}"
