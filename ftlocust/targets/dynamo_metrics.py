"""The metric names NVIDIA Dynamo exposes on `/metrics`: the catalogue `metric_increased` and
`cancellations_counted` check names against before any load (a typo is one line, exit 2).

Data only, no heavy import: `checks` loads it lazily; `register()` is idempotent. The reference
deployment speaks the same dialect, so its metrics are covered too.
"""

from __future__ import annotations

# Names the Dynamo dialect exposes (reference/dynamo-local.md §3, dynamo-ft-suite.md §7.5); the
# reference deployment speaks the same dialect. Stored by family base (no `_total` etc.).
METRICS = [
    *(
        "dynamo_frontend_" + n
        for n in (
            "requests_total", "requests_started_total", "inflight_requests", "active_requests",
            "queued_requests", "failures_total", "disconnected_clients",
            "time_to_first_token_seconds", "inter_token_latency_seconds", "request_duration_seconds",
            "input_sequence_tokens", "output_sequence_tokens", "output_tokens_total", "cached_tokens",
            "model_migration_limit", "model_ready", "model_context_length", "model_kv_cache_block_size",
            "model_max_num_batched_tokens", "model_max_num_seqs", "model_total_kv_blocks",
            "stage_duration_seconds", "stage_requests", "template_seconds", "tokenize_seconds",
            "tokenizer_latency_ms", "detokenize_token_count", "detokenize_total_us",
            "event_loop_delay_seconds", "event_loop_stall_total",
            "worker_last_time_to_first_token_seconds", "worker_last_inter_token_latency_seconds",
            "worker_last_input_sequence_tokens",
            "images_per_request", "image_tokens_per_request", "videos_per_request", "audio_per_request",
            "model_migration_total", "model_migration_duration_seconds",
            "model_migration_max_seq_len_exceeded_total", "model_cancellation_total",
            "model_rejection_total",
        )
    ),
    *(
        "dynamo_component_" + n
        for n in (
            "requests_total", "inflight_requests", "cancellation_total", "request_duration_seconds",
            "request_bytes_total", "response_bytes_total", "uptime_seconds",
            "kv_publisher_engines_dropped_events_total",
        )
    ),
    *(
        "dynamo_component_router_" + n
        for n in (
            "requests_total", "requests_started_total", "time_to_first_token_seconds",
            "inter_token_latency_seconds", "input_sequence_tokens", "output_sequence_tokens", "kv_hit_rate",
        )
    ),
    *(
        "dynamo_router_" + n
        for n in (
            "requests_total", "time_to_first_token_seconds", "inter_token_latency_seconds",
            "input_sequence_tokens", "output_sequence_tokens", "kv_hit_rate",
        )
    ),
    "dynamo_request_plane_inflight_requests", "dynamo_request_plane_queue_seconds",
    "dynamo_request_plane_send_seconds", "dynamo_request_plane_roundtrip_ttft_seconds",
    "dynamo_transport_tcp_errors_total", "dynamo_transport_tcp_bytes_sent_total",
    "dynamo_transport_tcp_bytes_received_total", "dynamo_transport_tcp_accept_backoff_total",
    "dynamo_engine_request", "dynamo_request_queue", "dynamo_rejection_request_total",
    *(
        "vllm:" + n
        for n in (
            "num_requests_running", "num_requests_waiting", "time_to_first_token_seconds",
            "inter_token_latency_seconds", "e2e_request_latency_seconds", "request_latency_seconds",
            "kv_cache_usage_perc", "gpu_cache_usage_perc", "num_preemptions_total",
            "nixl_num_kv_expired_reqs",
        )
    ),
]
# Families documented only by prefix.
PATTERNS = [
    "dynamo_frontend_tokenizer_cache_*",
    "dynamo_component_router_*",
    "dynamo_router_overhead_*_ms",
    "dynamo_tokio_*",
    "dynamo_work_handler_*",
    "process_*",  # prometheus_client's default collectors
    "python_*",
]


def register() -> None:
    """Add the catalogue to `ftlocust.checks`' registry (again is harmless)."""
    from ftlocust.checks import register_metrics

    register_metrics(*METRICS, *PATTERNS)
