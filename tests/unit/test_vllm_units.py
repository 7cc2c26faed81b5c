"""The real-vLLM targets' pure parts, without vLLM: the tiny model's random weights, the env
builder's fixes and detection, the process_exit check, vLLM-shaped streams and log lines, a
leader's orphans at stop(), and the vllm / dynamo-vllm deployments' command lines."""

from __future__ import annotations

import array
import importlib.metadata
import json
import math
import operator
import os
import sys
import time
import types
from pathlib import Path

import pytest

from ftlocust import vllm_env
from ftlocust.checks import RunResult, build_check, build_checks, evaluate
from ftlocust.errors import ConfigError
from ftlocust.evidence import find_serving_role, request_id_regex
from ftlocust.records import OK, RequestRecord
from ftlocust.responses import FROM_CHUNK_USAGE, FROM_CHUNKS, StreamReader, classify
from ftlocust.scenario import TargetSpec
from ftlocust.targets import tinymodel, tinyweights
from ftlocust.targets.dynamo_vllm import DynamoVllmDeployment
from ftlocust.targets.local import ProcessGroup, ProcessSpec
from ftlocust.targets.vllm import SERVING_LOG_PATTERN, VllmDeployment, engine_args, engine_env

CPU_VARS = ("VLLM_TARGET_DEVICE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")


# --- tinyweights: the safetensors file, parsed with the stdlib ----------------------------------


def parse_safetensors(path: Path) -> tuple[dict, int, bytes]:
    """(header, header length, data section) of a safetensors file."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    return header, header_len, raw[8 + header_len:]


def tensor(header: dict, data: bytes, name: str) -> array.array:
    start, end = header[name]["data_offsets"]
    values = array.array("f")
    values.frombytes(data[start:end])
    if sys.byteorder != "little":
        values.byteswap()
    return values


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """Two folders written independently (determinism), and the first one's parsed weights."""
    root = tmp_path_factory.mktemp("tiny-llama")
    a = tinyweights.write_tiny_llama(root / "a")
    b = tinyweights.write_tiny_llama(root / "b")
    header, header_len, data = parse_safetensors(a / tinyweights.WEIGHTS_FILE)
    config = json.loads((a / "config.json").read_text())
    return types.SimpleNamespace(a=a, b=b, header=header, header_len=header_len, data=data, config=config)


def test_tiny_llama_folder_is_deterministic_and_complete(tiny_llama):
    for name in (*tinymodel.FILES, tinyweights.WEIGHTS_FILE):
        assert (tiny_llama.a / name).read_bytes() == (tiny_llama.b / name).read_bytes(), name
    config = tiny_llama.config
    assert config["tie_word_embeddings"] is False  # lm_head is its own tensor, with the ban in it
    assert config["torch_dtype"] == "float32"
    assert config["vocab_size"] == tinymodel.ORDINARY_TOKENS + 2
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_tiny_llama_reuses_a_complete_folder(tiny_llama, tmp_path):
    dest = tmp_path / "m"
    dest.mkdir()
    for name in (*tinymodel.FILES, tinyweights.WEIGHTS_FILE):
        (dest / name).write_text("kept")
    assert tinyweights.write_tiny_llama(dest) == dest
    assert (dest / tinyweights.WEIGHTS_FILE).read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left


def test_safetensors_offsets_are_contiguous_and_cover_the_file(tiny_llama):
    header, data = tiny_llama.header, tiny_llama.data
    assert tiny_llama.header_len % 8 == 0  # the data section is 8-byte aligned
    tensors = {k: t for k, t in header.items() if k != "__metadata__"}
    spans = sorted(t["data_offsets"] for t in tensors.values())
    assert spans[0][0] == 0
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end == start
    assert spans[-1][1] == len(data)
    for name, t in tensors.items():
        start, end = t["data_offsets"]
        assert t["dtype"] == "F32", name
        assert end - start == 4 * math.prod(t["shape"]), name


def test_safetensors_shapes_match_the_config(tiny_llama):
    c = tiny_llama.config
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    expected = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h], "lm_head.weight": [vocab, h]}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        expected.update({
            p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [q, h], p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, q],
            p + "mlp.gate_proj.weight": [inter, h], p + "mlp.up_proj.weight": [inter, h],
            p + "mlp.down_proj.weight": [h, inter],
        })
    got = {k: t["shape"] for k, t in tiny_llama.header.items() if k != "__metadata__"}
    assert got == expected


def test_residual_dimension_zero_is_a_constant_no_layer_touches(tiny_llama):
    header, data, c = tiny_llama.header, tiny_llama.data, tiny_llama.config
    h = c["hidden_size"]
    embed = tensor(header, data, "model.embed_tokens.weight")
    assert all(embed[r * h] == 1.0 for r in range(c["vocab_size"]))
    assert any(embed[r * h + 1] != 0.0 for r in range(4))  # the rest is random
    for i in range(c["num_hidden_layers"]):
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):  # writers: row 0 all zero
            rows, cols = header[f"model.layers.{i}.{name}"]["shape"]
            w = tensor(header, data, f"model.layers.{i}.{name}")
            assert all(x == 0.0 for x in w[:cols]), name
            assert any(x != 0.0 for x in w[cols:2 * cols]), name
        for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                     "mlp.gate_proj.weight", "mlp.up_proj.weight"):  # readers: column 0 all zero
            rows, cols = header[f"model.layers.{i}.{name}"]["shape"]
            w = tensor(header, data, f"model.layers.{i}.{name}")
            assert all(w[r * cols] == 0.0 for r in range(rows)), name


def test_lm_head_weighs_dimension_zero_down_for_banned_tokens_only(tiny_llama):
    header, data, c = tiny_llama.header, tiny_llama.data, tiny_llama.config
    h = c["hidden_size"]
    head = tensor(header, data, "lm_head.weight")
    ban = array.array("f", [-tinyweights.BAN_WEIGHT])[0]  # as stored: float32
    for r in range(c["vocab_size"]):
        banned = r < tinyweights.FIRST_WORD_ID or r >= tinymodel.ORDINARY_TOKENS
        assert head[r * h] == (ban if banned else 0.0), r


def test_banned_logits_sit_far_below_every_word_logit(tiny_llama):
    """The embedding, RMS-normalised (the final norm's gains are 1), times every lm_head row:
    dimension 0 (1 before the norm) pushes bytes and special tokens hundreds below the words."""
    header, data, c = tiny_llama.header, tiny_llama.data, tiny_llama.config
    h, vocab = c["hidden_size"], c["vocab_size"]
    embed = tensor(header, data, "model.embed_tokens.weight")
    head = tensor(header, data, "lm_head.weight")
    gains = tensor(header, data, "model.norm.weight")
    rows = [head[r * h:(r + 1) * h] for r in range(vocab)]
    banned_ids = [r for r in range(vocab) if r < tinyweights.FIRST_WORD_ID or r >= tinymodel.ORDINARY_TOKENS]
    assert len(banned_ids) == tinyweights.FIRST_WORD_ID + 2
    for token in (0, 300, 1234, 4095, tinymodel.ORDINARY_TOKENS + 1):
        e = embed[token * h:(token + 1) * h]
        rms = math.sqrt(sum(x * x for x in e) / h + c["rms_norm_eps"])
        hidden = [x / rms * g for x, g in zip(e, gains)]
        logits = [sum(map(operator.mul, hidden, row)) for row in rows]
        banned = [logits[r] for r in banned_ids]
        words = [logits[r] for r in range(tinyweights.FIRST_WORD_ID, tinymodel.ORDINARY_TOKENS)]
        assert max(banned) < min(words) - 100, token


# --- vllm_env: the torchvision patch, the dist-info shim, env detection ---------------------------

TORCHVISION_EXCERPT = '''import functools

import torch
import torch._custom_ops
import torch.library

# Ensure that torch.ops.torchvision is visible
import torchvision.extension  # noqa: F401


@functools.lru_cache(None)
def get_meta_lib():
    return torch.library.Library("torchvision", "IMPL", "Meta")


def register_meta(op_name, overload_name="default"):
    def wrapper(fn):
        if torchvision.extension._has_ops():
            get_meta_lib().impl(getattr(getattr(torch.ops.torchvision, op_name), overload_name), fn)
        return fn

    return wrapper


@torch.library.register_fake("torchvision::nms")
def meta_nms(dets, scores, iou_threshold):
    torch._check(dets.dim() == 2, lambda: f"boxes should be a 2d tensor, got {dets.dim()}D")
    ctx = torch._custom_ops.get_ctx()
    num_to_keep = ctx.create_unbacked_symint()
    return dets.new_empty(num_to_keep, dtype=torch.long)


@torch.library.register_fake("torchvision::qnms")
def meta_qnms(dets, scores, iou_threshold):
    ctx = torch._custom_ops.get_ctx()
    num_to_keep = ctx.create_unbacked_symint()
    return dets.new_empty(num_to_keep, dtype=torch.long)
'''


def fake_site(tmp_path, text=TORCHVISION_EXCERPT) -> Path:
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    (site / "torchvision" / "__pycache__").mkdir(parents=True)
    (site / "torchvision" / "_meta_registrations.py").write_text(text)
    (site / "torchvision" / "__pycache__" / "_meta_registrations.cpython-311.pyc").write_bytes(b"stale")
    return site


def run_meta_registrations(source: str, has_ops: bool, monkeypatch) -> tuple[list[str], dict]:
    """Execute the module against stand-ins for torch and torchvision: which fakes it registers."""
    registered: list[str] = []

    def register_fake(op):
        def decorator(fn):
            registered.append(op)
            return fn
        return decorator

    torch = types.ModuleType("torch")
    torch.library = types.SimpleNamespace(register_fake=register_fake)
    torch._custom_ops = types.SimpleNamespace()
    torchvision = types.ModuleType("torchvision")
    torchvision.extension = types.SimpleNamespace(_has_ops=lambda: has_ops)
    for name, module in (("torch", torch), ("torch.library", torch.library), ("torch._custom_ops", torch._custom_ops),
                         ("torchvision", torchvision), ("torchvision.extension", torchvision.extension)):
        monkeypatch.setitem(sys.modules, name, module)
    namespace: dict = {}
    exec(compile(source, "_meta_registrations.py", "exec"), namespace)
    return registered, namespace


def test_patch_torchvision_guards_both_fakes_and_is_idempotent(tmp_path, monkeypatch):
    site = fake_site(tmp_path)
    path = site / "torchvision" / "_meta_registrations.py"
    assert run_meta_registrations(path.read_text(), False, monkeypatch)[0] == ["torchvision::nms", "torchvision::qnms"]
    vllm_env._patch_torchvision(site)
    patched = path.read_text()
    assert not vllm_env.TORCHVISION_FAKES.search(patched)  # no bare register_fake line left
    assert patched.count("if torchvision.extension._has_ops() else (lambda fn: fn)") == 2
    assert not list((site / "torchvision" / "__pycache__").iterdir())  # the stale bytecode is gone
    # Without the C++ operators nothing is registered, and the functions are still defined.
    registered, namespace = run_meta_registrations(patched, False, monkeypatch)
    assert registered == [] and callable(namespace["meta_nms"]) and callable(namespace["meta_qnms"])
    assert run_meta_registrations(patched, True, monkeypatch)[0] == ["torchvision::nms", "torchvision::qnms"]
    vllm_env._patch_torchvision(site)  # a rebuild of a half-built env patches again: no change
    assert path.read_text() == patched


def test_patch_torchvision_refuses_an_unknown_file(tmp_path):
    site = fake_site(tmp_path, "import torch\n\n@register_meta('roi_align')\ndef meta_roi_align(x):\n    return x\n")
    with pytest.raises(ConfigError, match="no register_fake line") as err:
        vllm_env._patch_torchvision(site)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        vllm_env._patch_torchvision(tmp_path / "elsewhere")


def test_shim_dist_info_answers_the_vllm_lookup(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    assert not list(importlib.metadata.distributions(path=[str(site)]))
    vllm_env._shim_dist_info(site, "0.32.0")
    vllm_env._shim_dist_info(site, "0.32.0")  # again, as on a finished half-built env
    [dist] = list(importlib.metadata.distributions(path=[str(site)]))
    assert (dist.metadata["Name"], dist.version) == ("vllm", "0.32.0")
    assert list(importlib.metadata.distributions(path=[str(site)], name="vllm"))


def fake_env(path: Path, target: str = "vllm", device: str = "cpu", marker: str | None = None,
             python: bool = True, model: bool = True) -> Path:
    """A folder that passes for a complete env: bin/python, the marker, the tiny model's config."""
    (path / "bin").mkdir(parents=True, exist_ok=True)
    if python:
        (path / "bin" / "python").write_text("")
    (path / vllm_env.MARKER).write_text(vllm_env.marker_text(target, device) if marker is None else marker)
    if model:
        (path / vllm_env.MODEL_DIR).mkdir(parents=True, exist_ok=True)
        (path / vllm_env.MODEL_DIR / "config.json").write_text("{}")
    return path


def test_env_detection_by_marker_and_interpreter(tmp_path):
    cpu = fake_env(tmp_path / "cpu")
    assert vllm_env.env_device("vllm", cpu) == "cpu" and vllm_env.is_complete("vllm", cpu)
    assert vllm_env.require_env("vllm", cpu) == cpu
    assert vllm_env.env_device("vllm", fake_env(tmp_path / "cuda", device="cuda")) == "cuda"
    assert vllm_env.env_device("dynamo-vllm", cpu) is None  # another target's env
    assert vllm_env.env_device("dynamo-vllm", fake_env(tmp_path / "d", target="dynamo-vllm")) == "cpu"
    stale = fake_env(tmp_path / "stale", marker="target=vllm\nvllm==0.1.0\ndevice=cpu\n")
    no_python = fake_env(tmp_path / "nopy", python=False)
    for path in (stale, no_python, tmp_path / "missing"):
        assert vllm_env.env_device("vllm", path) is None and not vllm_env.is_complete("vllm", path)
        with pytest.raises(ConfigError) as err:
            vllm_env.require_env("vllm", path)
        assert f"`python -m ftlocust.vllm_env --target vllm --path {path}`" in str(err.value)


def test_unknown_flavour_names_the_flag():
    with pytest.raises(ConfigError, match=r"--target: expected one of vllm, dynamo-vllm, got 'nope'"):
        vllm_env.flavour("nope")


def test_main_check_reports_without_building(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert vllm_env.main(["--target", "vllm", "--check", "--path", str(empty)]) == 1
    assert "missing or incomplete" in capsys.readouterr().out
    assert list(empty.iterdir()) == []  # --check creates nothing
    env = fake_env(tmp_path / "env")
    assert vllm_env.main(["--target", "vllm", "--check", "--path", str(env)]) == 0
    assert "complete (cpu)" in capsys.readouterr().out


# --- checks: process_exit ------------------------------------------------------------------------

EXITS = [{"role": "worker-1", "pid": 101, "exit_code": 0, "signal": None},
         {"role": "broker", "pid": 102, "exit_code": None, "signal": "SIGKILL"}]


def verdict(spec, result):
    [v] = evaluate(build_checks([spec]), result, builtin=False)
    return v


def test_process_exit_passes_on_role_glob_and_status():
    v = verdict({"check": "process_exit", "role": "worker-*", "exit_code": 0}, RunResult(exits=EXITS))
    assert v.passed, v.detail
    assert v.name == "worker-* exited during the run with status 0"
    assert v.detail == "worker-1 (pid 101) status 0"
    assert verdict({"check": "process_exit", "role": "worker-1"}, RunResult(exits=EXITS)).passed  # any status


def test_process_exit_fails_on_another_status():
    v = verdict({"check": "process_exit", "role": "worker-1", "exit_code": 1}, RunResult(exits=EXITS))
    assert not v.passed and v.detail == "worker-1 (pid 101) status 0"


def test_process_exit_fails_when_no_process_of_the_role_exited():
    v = verdict({"check": "process_exit", "role": "frontend"}, RunResult(exits=EXITS))
    assert not v.passed
    assert v.detail == ("no process of frontend exited during the run "
                        "(exits: worker-1 (pid 101) status 0, broker (pid 102) signal SIGKILL)")
    none = verdict({"check": "process_exit", "role": "frontend"}, RunResult(exits=[]))
    assert not none.passed and none.detail.endswith("(exits: none)")


def test_process_exit_unknown_exits_fail_even_with_allow_empty():
    v = verdict({"check": "process_exit", "role": "worker-1"}, RunResult(exits=None))
    assert not v.passed and v.detail.startswith("empty:")
    # allow_empty accepts an empty set, but "not recorded" is not empty: nothing is known.
    v = verdict({"check": "process_exit", "role": "worker-1", "allow_empty": True}, RunResult(exits=None))
    assert not v.passed and v.detail == "this target does not record how its processes ended"


def test_process_exit_by_signal():
    assert verdict({"check": "process_exit", "role": "broker", "signal": "SIGKILL"}, RunResult(exits=EXITS)).passed
    v = verdict({"check": "process_exit", "role": "broker", "signal": "SIGTERM"}, RunResult(exits=EXITS))
    assert not v.passed and v.detail == "broker (pid 102) signal SIGKILL"
    assert not verdict({"check": "process_exit", "role": "worker-1", "signal": "SIGKILL"}, RunResult(exits=EXITS)).passed
    assert build_check({"check": "process_exit", "role": "broker", "signal": "SIGKILL"}).name == \
        "broker exited during the run by SIGKILL"


def test_process_exit_bad_fields_are_config_errors_before_the_run():
    with pytest.raises(ConfigError, match=r"checks\[0\]\.signal") as err:
        build_checks([{"check": "process_exit", "role": "worker-1", "signal": "SIGKIL"}])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"checks\[0\]\.exit_code"):
        build_checks([{"check": "process_exit", "role": "worker-1", "exit_code": 256}])
    with pytest.raises(ConfigError, match=r"checks\[0\]\.role"):
        build_checks([{"check": "process_exit"}])


# --- responses: vLLM's merged chunks -------------------------------------------------------------


def feed_chunks(chunks: list[dict], chat: bool = False) -> StreamReader:
    reader = StreamReader(chat)
    now = 1.0
    for chunk in chunks:
        if reader.feed(b"data: " + json.dumps(chunk).encode() + b"\n", now):
            now += 0.1
        reader.feed(b"\n", now)
    reader.feed(b"data: [DONE]\n", now)
    return reader


def record_for(expected: int | None) -> RequestRecord:
    return RequestRecord(kind="completion-stream", endpoint="/v1/completions", stream=True, status=200,
                         start_mono=0.5, start_wall=1000.0, expected_tokens=expected, seed=7)


def test_a_single_chunk_with_all_tokens_counts_its_usage():
    """A lagging vLLM reader sends all 50 tokens in one chunk, finish_reason and usage on it."""
    reader = feed_chunks([{"id": "cmpl-abc", "object": "text_completion",
                           "choices": [{"index": 0, "text": " word" * 50, "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 50, "total_tokens": 53}}])
    assert reader.counted_tokens() == (50, FROM_CHUNK_USAGE)
    record = classify(record_for(50), reader)
    assert record.outcome == OK, record.error
    assert (record.output_tokens, record.token_source, record.content_chunks) == (50, FROM_CHUNK_USAGE, 1)
    assert record.token_count_mismatch is None and record.finish_reason == "length"


def test_one_token_chunks_then_a_usage_only_chunk_count_the_chunks():
    chunks = [{"id": "cmpl-abc", "choices": [{"index": 0, "text": f" w{i}", "finish_reason": "length" if i == 2 else None}]}
              for i in range(3)]
    chunks.append({"id": "cmpl-abc", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}})
    reader = feed_chunks(chunks)
    assert reader.counted_tokens() == (3, FROM_CHUNKS)
    record = classify(record_for(3), reader)
    assert record.outcome == OK and record.usage_completion_tokens == 3 and record.token_count_mismatch is None
    short = classify(record_for(4), feed_chunks(chunks))
    assert short.outcome != OK  # 3 of 4 with ignore_eos: truncated


# --- evidence: vLLM's request log line -----------------------------------------------------------

VLLM_ID = "92133a0873186478"


def test_vllm_request_log_line_is_found_for_its_id_only(tmp_path):
    log = tmp_path / "worker-1.log"
    log.write_text(
        "(APIServer pid=1) INFO 12-01 20:00:00 [logger.py:49] Received request cmpl-0000a0873186478f-0: "
        "params: SamplingParams(n=1, max_tokens=5), prompt_token_ids: [1, 2].\n"
        f"(APIServer pid=1) INFO 12-01 20:00:01 [logger.py:49] Received request cmpl-{VLLM_ID}-0: "
        "params: SamplingParams(n=1, presence_penalty=0.0, max_tokens=50), prompt_token_ids: [5, 6].\n")
    roles = {"worker-1": str(log)}
    for rid in (VLLM_ID, f"cmpl-{VLLM_ID}"):
        assert find_serving_role(roles, rid, timeout_s=0, pattern=SERVING_LOG_PATTERN) == "worker-1", rid
    for rid in (VLLM_ID[:-1], "ffff0000ffff0000", "2133a0873186478"):  # a prefix, another id, a suffix
        assert find_serving_role(roles, rid, timeout_s=0, pattern=SERVING_LOG_PATTERN) is None, rid


def test_vllm_chat_request_log_line_is_found():
    import re

    line = f"(APIServer pid=1) INFO Received request chatcmpl-{VLLM_ID}-0: params: SamplingParams(n=1)"
    assert re.search(request_id_regex(f"chatcmpl-{VLLM_ID}", SERVING_LOG_PATTERN), line)
    assert not re.search(request_id_regex(VLLM_ID + "0", SERVING_LOG_PATTERN), line)


# --- ProcessGroup: a leader's orphans are ended at stop() ----------------------------------------

ORPHANING_LEADER = ("import subprocess, sys, time\n"
                    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                    "open(sys.argv[1] + '.tmp', 'w').write(str(p.pid))\n"
                    "import os; os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
                    "time.sleep(0.2)\n")


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow: a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_stop_ends_what_a_leader_left_in_its_process_group(tmp_path):
    pidfile = tmp_path / "orphan.pid"
    group = ProcessGroup(tmp_path / "run")
    orphan = None
    try:
        group.start(ProcessSpec("x", [sys.executable, "-c", ORPHANING_LEADER, str(pidfile)]), wait=False)
        assert wait_until(lambda: not group.alive("x") and pidfile.exists(), 10), "the leader did not exit"
        orphan = int(pidfile.read_text())
        assert running(orphan)
        assert os.getpgid(orphan) == group.pid("x")  # still in the leader's (own-session) group
        group.stop()
        assert wait_until(lambda: not running(orphan), 2), f"orphan {orphan} survived stop()"
        assert group.exits() == [{"role": "x", "pid": group.pid("x"), "exit_code": 0, "signal": None}]
    finally:
        group.stop(grace_s=0)
        if orphan is None and pidfile.exists():
            orphan = int(pidfile.read_text())
        if orphan is not None and running(orphan):
            os.kill(orphan, 9)


# --- the vllm and dynamo-vllm deployments, not started -------------------------------------------


def test_engine_env_sets_the_cpu_variables_on_cpu_only():
    cpu = engine_env("cpu", "1", 1.0)
    assert (cpu["VLLM_TARGET_DEVICE"], cpu["VLLM_CPU_OMP_THREADS_BIND"], cpu["VLLM_CPU_KVCACHE_SPACE"]) == ("cpu", "1", "1")
    assert engine_env("cpu", "0", 2.5)["VLLM_CPU_KVCACHE_SPACE"] == "2.5"
    cuda = engine_env("cuda", "1", 1.0)
    assert not set(CPU_VARS) & set(cuda) and cuda["HF_HUB_OFFLINE"] == "1"


def test_engine_args_on_cpu_and_cuda(tmp_path):
    cpu = engine_args("cpu", tmp_path, "tiny")
    assert cpu[:4] == ["--model", str(tmp_path), "--served-model-name", "tiny"]
    assert cpu[cpu.index("--dtype") + 1] == "float32" and "--enforce-eager" in cpu
    cuda = engine_args("cuda", tmp_path, "tiny")
    assert cuda == ["--model", str(tmp_path), "--served-model-name", "tiny"]


def test_vllm_deployment_refuses_bad_setups(tmp_path):
    env = fake_env(tmp_path / "env")
    with pytest.raises(ConfigError, match=r"target\.workers: .* got 2"):
        VllmDeployment.from_spec(TargetSpec(kind="vllm", workers=2, options={"env_path": str(env)}), str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"`python -m ftlocust\.vllm_env --target vllm "):
        VllmDeployment(tmp_path / "run", env_path=tmp_path / "no-env")
    with pytest.raises(ConfigError, match=r"^model_path: .* has no config\.json"):
        VllmDeployment(tmp_path / "run", env_path=env, model_path=tmp_path / "no-model")
    no_tiny = fake_env(tmp_path / "env2", model=False)
    with pytest.raises(ConfigError, match=r"^model_path: "):
        VllmDeployment(tmp_path / "run", env_path=no_tiny)


def test_vllm_deployment_command_line(tmp_path):
    env = fake_env(tmp_path / "env")
    d = VllmDeployment.from_spec(TargetSpec(kind="vllm", workers=1, options={"env_path": str(env)}), str(tmp_path / "run"))
    assert d.device == "cpu"  # auto: what the env was built for
    d.port = 18000
    spec = d._spec()
    assert spec.argv[:2] == [str(env / "bin" / "vllm"), "serve"]
    assert spec.argv[spec.argv.index("--model") + 1] == str(env / vllm_env.MODEL_DIR)
    assert "--enable-log-requests" in spec.argv  # what SERVING_LOG_PATTERN reads
    assert spec.argv[spec.argv.index("--host") + 1] == "127.0.0.1" and "18000" in spec.argv
    assert spec.env["VLLM_TARGET_DEVICE"] == "cpu" and "--enforce-eager" in spec.argv
    cuda = VllmDeployment(tmp_path / "run2", env_path=fake_env(tmp_path / "cuda", device="cuda"))
    cuda.port = 18001
    assert cuda.device == "cuda" and "--dtype" not in cuda._spec().argv
    assert not set(CPU_VARS) & set(cuda._spec().env)


def started_ports(d: DynamoVllmDeployment) -> DynamoVllmDeployment:
    """What DynamoDeployment.start sets before it builds the workers' specs."""
    d.port = 18100
    d._broker_ports = (18101, 18102)
    d._system_ports = {role: 18110 + i for i, role in enumerate(d.worker_roles())}
    return d


def test_dynamo_vllm_deployment_refuses_a_missing_env(tmp_path):
    with pytest.raises(ConfigError, match=r"`python -m ftlocust\.vllm_env --target dynamo-vllm "):
        DynamoVllmDeployment(tmp_path / "run", env_path=tmp_path / "no-env")
    with pytest.raises(ConfigError, match=r"--target dynamo-vllm "):  # a plain vllm env is not one
        DynamoVllmDeployment(tmp_path / "run", env_path=fake_env(tmp_path / "vllm-env"))


def test_dynamo_vllm_worker_spec(tmp_path):
    env = fake_env(tmp_path / "env", target="dynamo-vllm")
    d = started_ports(DynamoVllmDeployment.from_spec(
        TargetSpec(kind="dynamo-vllm", workers=2, options={"env_path": str(env)}), str(tmp_path / "run")))
    specs = {role: d._worker_spec(role) for role in d.worker_roles()}
    endpoints = []
    for role, spec in specs.items():
        argv = spec.argv
        assert argv[:3] == [str(env / "bin" / "python"), "-m", "dynamo.vllm"], role
        assert argv[argv.index("--model") + 1] == str(env / vllm_env.MODEL_DIR)
        assert argv[argv.index("--dtype") + 1] == "float32" and "--enforce-eager" in argv
        kv = json.loads(argv[argv.index("--kv-events-config") + 1])
        assert kv["enable_kv_cache_events"] is True and kv["publisher"] == "zmq"
        host, _, port = kv["endpoint"].removeprefix("tcp://").rpartition(":")
        assert host == "127.0.0.1", kv["endpoint"]  # loopback, not vLLM's default `*`
        assert int(port) not in (d.port, *d._broker_ports, *d._system_ports.values())
        endpoints.append(kv["endpoint"])
        assert spec.env["VLLM_TARGET_DEVICE"] == "cpu" and spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert spec.env["DYN_SYSTEM_PORT"] == str(d._system_ports[role])
    assert len(set(endpoints)) == 2  # each worker its own publisher port
    again = d._worker_spec("worker-1").argv  # a restart keeps the port
    assert json.loads(again[again.index("--kv-events-config") + 1])["endpoint"] == endpoints[0]
    cores = {spec.env["VLLM_CPU_OMP_THREADS_BIND"] for spec in specs.values()}
    assert len(cores) == min(2, len(os.sched_getaffinity(0)))  # each engine on its own core where there are two


def test_dynamo_vllm_worker_spec_on_cuda_has_no_cpu_settings(tmp_path):
    env = fake_env(tmp_path / "env", target="dynamo-vllm", device="cuda")
    d = started_ports(DynamoVllmDeployment(tmp_path / "run", workers=1, env_path=env))
    spec = d._worker_spec("worker-1")
    assert d.device == "cuda" and "--dtype" not in spec.argv and "--enforce-eager" not in spec.argv
    assert not set(CPU_VARS) & set(spec.env)


def test_process_exit_refuses_exit_code_and_signal_together_before_the_run():
    with pytest.raises(ConfigError, match=r"^checks\[0\]\.signal: expected exit_code or signal, not both"):
        build_checks([{"check": "process_exit", "role": "worker-1", "exit_code": 0, "signal": "SIGKILL"}])


# ----- a scenario's `deployment:` (the seed matrix's row) ----------------------------------------

def _row_scenario(deployment, target=None) -> dict:
    data = {"name": "row", "deployment": deployment}
    if target is not None:
        data["target"] = target
    return data


def test_deployment_row_runs_on_real_vllm_where_its_env_exists(tmp_path, monkeypatch):
    from ftlocust.scenario import scenario_from_dict

    env = fake_env(tmp_path / "dv", "dynamo-vllm")
    monkeypatch.setenv("FTLOCUST_DYNAMO_VLLM_ENV", str(env))
    s = scenario_from_dict(_row_scenario("vllm-agg-tp-1-dp-2", {"migration_limit": 0}), "s.yaml")
    assert (s.target.kind, s.target.workers, s.target.migration_limit) == ("dynamo-vllm", 2, 0)
    assert s.deployment == {"name": "vllm-agg-tp-1-dp-2", "backend": "vllm", "mode": "agg", "tp": 1, "dp": 2,
                            "target": "dynamo-vllm", "real_engine": True}
    # TP goes to vLLM; the same row as fields
    s = scenario_from_dict(_row_scenario({"backend": "vllm", "tp": 2, "dp": 1}), "s.yaml")
    assert s.target.options == {"extra_worker_args": ["--tensor-parallel-size", "2"]} and s.target.workers == 1


def test_deployment_row_without_the_env_runs_on_the_imitation_and_says_so(tmp_path, monkeypatch):
    from ftlocust.scenario import scenario_from_dict

    monkeypatch.setenv("FTLOCUST_DYNAMO_VLLM_ENV", str(tmp_path / "missing"))
    s = scenario_from_dict(_row_scenario("vllm-agg-tp-1-dp-2"), "s.yaml")
    assert (s.target.kind, s.target.workers, s.target.options) == ("reference", 2, {"engine_core": "VLLM::EngineCore"})
    assert s.deployment["target"] == "reference" and s.deployment["real_engine"] is False
    with pytest.raises(ConfigError, match=r"^s\.yaml: deployment: no local target can run vllm-agg-tp-2-dp-1 "
                                          r"\(dynamo-vllm: its environment is missing; reference: no tensor parallelism"):
        scenario_from_dict(_row_scenario("vllm-agg-tp-2-dp-1"), "s.yaml")


@pytest.mark.parametrize("deployment, target, message", [
    ("vllm-agg-tp-1-dp-2", {"kind": "dynamo"}, r"^s\.yaml: target\.kind: expected nothing: deployment vllm-agg-tp-1-dp-2 sets it"),
    ("vllm-agg-tp-1-dp-2", {"workers": 3}, r"^s\.yaml: target\.workers: expected nothing"),
    ("vllm-disagg-tp-1-dp-1", None, r"^s\.yaml: deployment: expected a seed deployment name like vllm-agg-tp-1-dp-2"),
    ({"backend": "vllm", "mode": "disagg"}, None, r"^s\.yaml: deployment\.mode: disagg has no local target yet"),
    ({"backend": "tgi"}, None, r"^s\.yaml: deployment\.backend: expected one of vllm, sglang, trtllm"),
    ({"backend": "vllm", "dp": 0}, None, r"^s\.yaml: deployment\.dp: expected an integer > 0"),
])
def test_bad_deployment_rows_name_the_field(deployment, target, message):
    from ftlocust.scenario import scenario_from_dict

    with pytest.raises(ConfigError, match=message):
        scenario_from_dict(_row_scenario(deployment, target), "s.yaml")


def test_another_target_flag_drops_the_rows_placement(tmp_path, monkeypatch):
    from ftlocust.scenario import apply_overrides, scenario_from_dict

    monkeypatch.setenv("FTLOCUST_DYNAMO_VLLM_ENV", str(tmp_path / "missing"))
    s = scenario_from_dict(_row_scenario("sglang-agg-tp-1-dp-2"), "s.yaml")
    assert s.deployment["backend"] == "sglang"
    placed = s.target.kind  # dynamo where its env exists, else reference
    assert apply_overrides(s, target_overrides={}, target_kind=placed).deployment == s.deployment  # same kind: kept
    other = "reference" if placed != "reference" else "dynamo"
    assert apply_overrides(s, target_overrides={}, target_kind=other).deployment is None
