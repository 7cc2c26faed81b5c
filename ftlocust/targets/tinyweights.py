"""Random weights for the tiny model, so a real engine (vLLM) can serve it: stdlib only.

The model folder of `tinymodel.py` plus `model.safetensors` (float32, LlamaForCausalLM names)
and the config fields vLLM reads. The weights are random but shaped so that every generated
token is an ordinary word (ids `FIRST_WORD_ID`..4095): never a bare byte (which decodes to
nothing or to half a character) nor a special token. How: residual dimension 0 is a constant 1
(every embedding has it, no layer writes to it or reads it), and the output rows of the banned
tokens weigh that dimension by -`BAN_WEIGHT`, so their logits sit far below every other.

    python -m ftlocust.targets.tinyweights DEST_DIR     # writes the folder, prints its path

Deterministic (a fixed seed): the same bytes every time.
"""

from __future__ import annotations

import array
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from ftlocust.targets import tinymodel

WEIGHTS_FILE = "model.safetensors"
FIRST_WORD_ID = 256  # 0..255 are single bytes
BAN_WEIGHT = 20.0
INIT_STD = 0.02
SEED = 4098
# Fields a real engine needs beyond what the mocker reads (HF Llama defaults, written out).
ENGINE_CONFIG = {"tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                 "hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


def _shapes(config: dict) -> dict[str, tuple[int, ...]]:
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (vocab, h)
    return shapes


def _tensor(name: str, shape: tuple[int, ...], rng: random.Random, vocab: int) -> array.array:
    if len(shape) == 1:  # norm gains
        return array.array("f", [1.0] * shape[0])
    rows, cols = shape
    values = array.array("f", (rng.gauss(0.0, INIT_STD) for _ in range(rows * cols)))
    if name == "model.embed_tokens.weight":
        for r in range(rows):
            values[r * cols] = 1.0  # the constant dimension
    elif name.endswith(("o_proj.weight", "down_proj.weight")):
        for c in range(cols):
            values[c] = 0.0  # row 0: nothing writes to dimension 0
    elif name == "lm_head.weight":
        for r in range(rows):
            banned = r < FIRST_WORD_ID or r >= tinymodel.ORDINARY_TOKENS
            values[r * cols] = -BAN_WEIGHT if banned else 0.0
    else:  # q, k, v, gate, up: column 0 ignored, so the constant does not flatten attention
        for r in range(rows):
            values[r * cols] = 0.0
    return values


def safetensors_bytes(tensors: dict[str, tuple[tuple[int, ...], array.array]]) -> bytes:
    """The safetensors encoding: u64 header length, JSON header, then the raw little-endian data."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset, blobs = 0, []
    for name, (shape, values) in tensors.items():
        if sys.byteorder != "little":
            values = array.array("f", values)
            values.byteswap()
        blob = values.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs)


def write_tiny_llama(dest: Path | str, name: str = "tiny") -> Path:
    """The tiny model folder with weights at `dest` (built aside, then renamed; reused if present)."""
    dest = Path(dest)
    if (dest / WEIGHTS_FILE).is_file() and all((dest / f).is_file() for f in tinymodel.FILES):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    staging.chmod(0o755)
    files = tinymodel.model_files(name)
    config = dict(files["config.json"], **ENGINE_CONFIG, torch_dtype="float32")
    files["config.json"] = config
    for filename, content in files.items():
        (staging / filename).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
    rng = random.Random(SEED)
    tensors = {n: (s, _tensor(n, s, rng, config["vocab_size"])) for n, s in _shapes(config).items()}
    (staging / WEIGHTS_FILE).write_bytes(safetensors_bytes(tensors))
    try:
        os.rename(staging, dest)
    except OSError:  # lost a race, or a partial leftover: keep a complete one, else report
        for child in staging.iterdir():
            child.unlink()
        staging.rmdir()
        if not (dest / WEIGHTS_FILE).is_file():
            raise
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m ftlocust.targets.tinyweights DEST_DIR", file=sys.stderr)
        sys.exit(2)
    print(write_tiny_llama(sys.argv[1]))
