/**
 * Prometheus metrics (prom-client). Serving metrics use vLLM's names (`vllm:*`, with a `model_name`
 * label) so that vLLM dashboards and the Gateway API Inference Extension's endpoint picker read sfn as
 * they read vLLM; plugins in use are published as vLLM publishes LoRA adapters (`vllm:lora_requests_info`).
 * sfn's own metrics are `sfn_*`. docs/metrics.md lists the mapping.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { WorkerStats } from '../runtime/protocol.ts';

export interface MetricsSource {
  modelName: () => string;
  /** Worker stats, or null while the engine is loading. */
  stats: () => Promise<WorkerStats | null>;
  /** Plugin ids (names users call) of views running and waiting. */
  pluginsInUse: () => { running: string[]; waiting: string[] };
  maxRunning: number;
  maxPlugins: number;
}

const LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160];

export class Metrics {
  readonly registry = new Registry();
  readonly ttft: Histogram<'model_name'>;
  readonly tpot: Histogram<'model_name'>;
  readonly interToken: Histogram<'model_name'>;
  readonly requestPromptTokens: Histogram<'model_name'>;
  readonly requestGenerationTokens: Histogram<'model_name'>;
  readonly requestMaxGenerationTokens: Histogram<'model_name'>;
  readonly queueTime: Histogram<'model_name'>;
  readonly prefillTime: Histogram<'model_name'>;
  readonly decodeTime: Histogram<'model_name'>;
  readonly e2e: Histogram<'model_name'>;
  readonly promptTokens: Counter<'model_name'>;
  readonly generationTokens: Counter<'model_name'>;
  readonly success: Counter<'model_name' | 'finished_reason'>;
  readonly httpRequests: Counter<'route' | 'status'>;

  constructor(src: MetricsSource) {
    const r = this.registry;
    collectDefaultMetrics({ register: r, prefix: 'sfn_' });
    const labelNames = ['model_name'] as const;
    // One worker round trip per scrape, shared by all metrics below: prom-client collects them concurrently,
    // so the first collect starts the request and the others await the same one.
    let pending: Promise<WorkerStats | null> | null = null;
    const current = () => (pending ??= src.stats().finally(() => (pending = null)));
    new Gauge({
      name: 'vllm:num_requests_running',
      help: 'Requests in decode or prefill (running batch rows).',
      labelNames,
      registers: [r],
      async collect() {
        const last = await current();
        this.set({ model_name: src.modelName() }, last?.running ?? 0);
      },
    });
    new Gauge({
      name: 'vllm:num_requests_waiting',
      help: 'Requests queued for a batch row.',
      labelNames,
      registers: [r],
      async collect() {
        const last = await current();
        this.set({ model_name: src.modelName() }, last?.waiting ?? 0);
      },
    });
    // One value under two names: vLLM's current one (which the Inference Extension's endpoint picker reads by
    // default) and the one it deprecated, kept one release for existing dashboards.
    for (const [name, help] of [
      ['vllm:kv_cache_usage_perc', 'KV-cache occupancy as a fraction: running rows / maximum running rows.'],
      ['vllm:gpu_cache_usage_perc', "KV-cache occupancy as a fraction: running rows / maximum running rows (sfn runs on CPU; the name is vLLM's)."],
    ]) {
      new Gauge({
        name,
        help,
        labelNames,
        registers: [r],
        async collect() {
          const last = await current();
          this.set({ model_name: src.modelName() }, (last?.running ?? 0) / src.maxRunning);
        },
      });
    }
    new Gauge({
      name: 'sfn_kv_cache_bytes',
      help: 'Bytes held by KV caches of active lanes.',
      registers: [r],
      async collect() {
        const last = await current();
        this.set(last?.cacheBytes ?? 0);
      },
    });
    new Gauge({
      name: 'vllm:lora_requests_info',
      help: 'Plugins (served as vLLM serves LoRA adapters) in running and waiting requests.',
      labelNames: ['running_lora_adapters', 'waiting_lora_adapters', 'max_lora'],
      registers: [r],
      async collect() {
        this.reset();
        const p = src.pluginsInUse();
        this.set({ running_lora_adapters: p.running.join(','), waiting_lora_adapters: p.waiting.join(','), max_lora: String(src.maxPlugins) }, Date.now() / 1000);
      },
    });
    const gauge = (name: string, help: string, pick: (s: WorkerStats) => number) =>
      new Gauge({
        name,
        help,
        registers: [r],
        async collect() {
          const last = await current();
          this.set(last ? pick(last) : 0);
        },
      });
    // Totals kept by the engine worker, exposed as counters (reset, then the total) so that rate() works.
    const total = (name: string, help: string, pick: (s: WorkerStats) => number) =>
      new Counter({
        name,
        help,
        registers: [r],
        async collect() {
          const last = await current();
          this.reset();
          this.inc(last ? pick(last) : 0);
        },
      });
    total('sfn_plugin_cache_hits_total', 'Plugin tensor cache hits.', (s) => s.overlays.hits);
    total('sfn_plugin_cache_misses_total', 'Plugin tensor cache misses (loads from disk).', (s) => s.overlays.misses);
    total('sfn_plugin_cache_evictions_total', 'Plugins evicted from the tensor cache.', (s) => s.overlays.evictions);
    gauge('sfn_plugin_cache_bytes', 'Bytes of plugin tensors held by the cache.', (s) => s.overlays.bytes);
    total('sfn_engine_steps_total', 'Forward runs (prefill chunks and decode steps).', (s) => s.steps);

    this.ttft = new Histogram({ name: 'vllm:time_to_first_token_seconds', help: 'Time to first token.', labelNames, buckets: LATENCY_BUCKETS, registers: [r] });
    const tokenBuckets = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5];
    // Deprecated in vLLM (renamed vllm:inter_token_latency_seconds); kept one release. Both get the same observations.
    this.tpot = new Histogram({ name: 'vllm:time_per_output_token_seconds', help: 'Time per output token after the first (deprecated name).', labelNames, buckets: tokenBuckets, registers: [r] });
    this.interToken = new Histogram({ name: 'vllm:inter_token_latency_seconds', help: 'Time between output tokens.', labelNames, buckets: tokenBuckets, registers: [r] });
    const countBuckets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000];
    this.requestPromptTokens = new Histogram({ name: 'vllm:request_prompt_tokens', help: 'Prompt tokens per request.', labelNames, buckets: countBuckets, registers: [r] });
    this.requestGenerationTokens = new Histogram({ name: 'vllm:request_generation_tokens', help: 'Generated tokens per request.', labelNames, buckets: countBuckets, registers: [r] });
    this.requestMaxGenerationTokens = new Histogram({
      name: 'vllm:request_max_num_generation_tokens',
      help: 'Maximum generation tokens requested (max_tokens) per request.',
      labelNames,
      buckets: countBuckets,
      registers: [r],
    });
    this.queueTime = new Histogram({ name: 'vllm:request_queue_time_seconds', help: 'Time a request waited for a batch row.', labelNames, buckets: LATENCY_BUCKETS, registers: [r] });
    this.prefillTime = new Histogram({ name: 'vllm:request_prefill_time_seconds', help: 'Time from a batch row to the first token.', labelNames, buckets: LATENCY_BUCKETS, registers: [r] });
    this.decodeTime = new Histogram({ name: 'vllm:request_decode_time_seconds', help: 'Time from the first token to the last.', labelNames, buckets: LATENCY_BUCKETS, registers: [r] });
    this.e2e = new Histogram({ name: 'vllm:e2e_request_latency_seconds', help: 'End-to-end request latency.', labelNames, buckets: LATENCY_BUCKETS, registers: [r] });
    this.promptTokens = new Counter({ name: 'vllm:prompt_tokens_total', help: 'Prompt tokens processed.', labelNames, registers: [r] });
    this.generationTokens = new Counter({ name: 'vllm:generation_tokens_total', help: 'Tokens generated.', labelNames, registers: [r] });
    this.success = new Counter({ name: 'vllm:request_success_total', help: 'Finished requests by finish reason.', labelNames: ['model_name', 'finished_reason'], registers: [r] });
    this.httpRequests = new Counter({ name: 'sfn_http_requests_total', help: 'HTTP requests by route and status.', labelNames: ['route', 'status'], registers: [r] });
  }
}
