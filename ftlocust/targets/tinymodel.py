"""A tiny model folder for Dynamo's mocker: tokenizer, chat template, config. No weights, no hub.

Why each part exists (measured, shared/reference/dynamo-local.md section 1):
- The mocker emits output token ids in [1000, 2000). Ids that decode to "" make the frontend drop
  every chunk, so the vocabulary has 4096 ordinary tokens, ids 416.. being " <two syllables>".
- The frontend refuses to serve a model whose tokenizer_config.json lacks `chat_template`, even
  for /v1/completions.
- The mocker sizes its KV cache from config.json (layers, heads, hidden size, dtype).

The tokenizer is a hand-built byte-level BPE (GPT-2 style): 256 byte tokens, 80 consonant-vowel
syllables, the same with a leading space, then two-syllable words with a leading space, each
reachable by merges so prompts encode to words too. Stdlib only and deterministic: the same
bytes on every run, so Dynamo's model-card cache keys stay stable.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

CONSONANTS = "bdfghjklmnprstvz"
VOWELS = "aeiou"
ORDINARY_TOKENS = 4096
BOS, EOS = "<s>", "</s>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json")


def _byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable stand-in for each byte value 0..255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def build_vocab() -> tuple[dict[str, int], list[str]]:
    """(vocab token -> id, merges in rank order) for the 4096 ordinary tokens."""
    alphabet = _byte_alphabet()
    space = alphabet[ord(" ")]  # "Ġ"
    tokens: list[str] = list(alphabet)
    merges: list[str] = []
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    for syl in syllables:
        tokens.append(syl)
        merges.append(f"{syl[0]} {syl[1]}")
    for syl in syllables:
        tokens.append(space + syl)
        merges.append(f"{space} {syl}")
    # Two-syllable words in a fixed scrambled order (i * prime mod n) so output is not "baba babe ...".
    pairs = len(syllables) ** 2
    for i in range(ORDINARY_TOKENS - len(tokens)):
        j = (i * 7919) % pairs
        first, second = syllables[j // len(syllables)], syllables[j % len(syllables)]
        tokens.append(space + first + second)
        merges.append(f"{space + first} {second}")
    return {tok: i for i, tok in enumerate(tokens)}, merges


def tokenizer_json() -> dict:
    vocab, merges = build_vocab()
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [
        {"id": ORDINARY_TOKENS + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, tok in enumerate((BOS, EOS))
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": merges,
        },
    }


def model_files(name: str = "tiny") -> dict[str, dict]:
    """File name -> JSON content of the model folder."""
    bos_id, eos_id = ORDINARY_TOKENS, ORDINARY_TOKENS + 1
    vocab_size = ORDINARY_TOKENS + 2
    return {
        "tokenizer.json": tokenizer_json(),
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "model_max_length": 8192,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "chat_template": CHAT_TEMPLATE,
            "added_tokens_decoder": {
                str(bos_id): {"content": BOS, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": True},
                str(eos_id): {"content": EOS, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": True},
            },
        },
        "special_tokens_map.json": {"bos_token": BOS, "eos_token": EOS},
        # Llama-shaped and small: the mocker only reads the sizes to compute KV bytes per token.
        "config.json": {
            "_name_or_path": name,
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "head_dim": 64,
            "max_position_embeddings": 8192,
            "torch_dtype": "float16",
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
        },
        "generation_config.json": {"bos_token_id": bos_id, "eos_token_id": eos_id},
    }


def write_tiny_model(dest: Path | str, name: str = "tiny") -> Path:
    """Write the model folder at `dest` atomically (built aside, then renamed); reuse if present.

    Safe when several processes call it with the same `dest` at once: one rename wins, the rest
    find the finished folder.
    """
    dest = Path(dest)
    if all((dest / f).is_file() for f in FILES):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it 0700
    for filename, content in model_files(name).items():
        (staging / filename).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
    try:
        os.rename(staging, dest)
    except OSError:
        # Lost the race (dest now exists) or dest is a leftover partial folder: keep what is there
        # if it is complete, else report.
        for filename in FILES:
            (staging / filename).unlink(missing_ok=True)
        staging.rmdir()
        if not all((dest / f).is_file() for f in FILES):
            raise
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m ftlocust.targets.tinymodel DEST_DIR", file=sys.stderr)
        sys.exit(2)
    print(write_tiny_model(sys.argv[1]))
