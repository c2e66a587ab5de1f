"""Prometheus metrics of the server (`GET /metrics`), per adapter (`base` = the base model).

    zhlora_requests_total{adapter, finish_reason}      finished sequences (one per choice)
    zhlora_prompt_tokens_total{adapter}, zhlora_generation_tokens_total{adapter}
    zhlora_queue_wait_seconds{adapter}                  histogram: submitted -> admitted
    zhlora_time_to_first_token_seconds{adapter}         histogram: submitted -> first token
    zhlora_prefill_forwards_total, zhlora_prefill_prompts_total  prefill passes and the prompts
                                                        they held (prompts / passes: batched prefill)
    zhlora_running_sequences, zhlora_waiting_sequences  gauges
"""
from __future__ import annotations

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    """Metrics in their own registry (several apps in one process do not clash)."""

    def __init__(self, scheduler, base_name: str = "base"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.base_name = base_name
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("zhlora_requests", "finished sequences", ["adapter", "finish_reason"], registry=r)
        self.prompt_tokens = Counter("zhlora_prompt_tokens", "prompt tokens", ["adapter"], registry=r)
        self.gen_tokens = Counter("zhlora_generation_tokens", "generated tokens", ["adapter"], registry=r)
        self.queue_wait = Histogram("zhlora_queue_wait_seconds", "time from submission to admission",
                                    ["adapter"], buckets=_BUCKETS, registry=r)
        self.ttft = Histogram("zhlora_time_to_first_token_seconds", "time from submission to the first token",
                              ["adapter"], buckets=_BUCKETS, registry=r)
        self.prefill_forwards = Counter("zhlora_prefill_forwards", "forward passes that prefilled prompts",
                                        registry=r)
        self.prefill_prompts = Counter("zhlora_prefill_prompts", "prompts prefilled", registry=r)
        Gauge("zhlora_running_sequences", "sequences in the running batch",
              registry=r).set_function(lambda: scheduler.running)
        Gauge("zhlora_waiting_sequences", "sequences waiting for a batch slot",
              registry=r).set_function(lambda: scheduler.waiting)

    def record(self, seq, completion) -> None:
        """Called by the scheduler when `seq` ends."""
        name = seq.adapter or self.base_name
        self.requests.labels(name, completion.finish_reason).inc()
        self.prompt_tokens.labels(name).inc(completion.prompt_tokens)
        self.gen_tokens.labels(name).inc(completion.completion_tokens)
        if seq.started_at is not None:
            self.queue_wait.labels(name).observe(seq.started_at - seq.submitted_at)
        if seq.first_token_at is not None:
            self.ttft.labels(name).observe(seq.first_token_at - seq.submitted_at)

    def record_prefill(self, prompts: int, forwards: int) -> None:
        """Called by the scheduler after prefilling `prompts` prompts in `forwards` passes."""
        self.prefill_prompts.inc(prompts)
        self.prefill_forwards.inc(forwards)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
