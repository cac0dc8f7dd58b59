/**
 * Runs generation jobs on the engine host for the HTTP routes: admission against the queue bound, an
 * async stream of events per job, cancellation when the client goes away, and the serving metrics.
 */
import { randomUUID } from 'node:crypto';
import type { Finish, GeneratedToken } from '../engine/generate.ts';
import { EngineLostError, type EngineHost, type HostJob } from '../runtime/host.ts';
import type { JobParams, ViewSpec } from '../runtime/protocol.ts';
import type { PromptLogprob } from '../engine/scheduler.ts';
import { ApiError, badRequest, tooMany, unavailable } from './errors.ts';
import type { Metrics } from './metrics.ts';

export type JobEvent = { type: 'token'; token: GeneratedToken } | { type: 'prompt_logprobs'; logprobs: PromptLogprob[] } | { type: 'done'; finish: Finish };

export interface JobSpec {
  promptIds: number[];
  params: JobParams;
  view: ViewSpec;
  promptLogprobs?: number;
  /** A request's choices of one prompt: prefilled once, and its tokens counted once (by the `first`). */
  promptGroup?: { key: string; first: boolean };
}

export interface JobLimits {
  maxRunning: number;
  maxWaiting: number;
}

/** A minimal async queue: the worker's callbacks push, the route's loop pulls. */
class EventQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private readers: { resolve: (r: IteratorResult<T>) => void; reject: (e: Error) => void }[] = [];
  private failed: Error | null = null;
  private ended = false;

  push(x: T): void {
    const r = this.readers.shift();
    if (r) r.resolve({ value: x, done: false });
    else this.items.push(x);
  }

  end(): void {
    this.ended = true;
    for (const r of this.readers.splice(0)) r.resolve({ value: undefined, done: true });
  }

  fail(e: Error): void {
    this.failed = e;
    for (const r of this.readers.splice(0)) r.reject(e);
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.items.length) return Promise.resolve({ value: this.items.shift()!, done: false });
        if (this.failed) return Promise.reject(this.failed);
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => this.readers.push({ resolve, reject }));
      },
    };
  }
}

export class JobRunner {
  private readonly host: EngineHost;
  private readonly metrics: Metrics;
  private readonly modelName: () => string;
  private readonly limits: JobLimits;
  /** The plugin each in-flight job runs on, by the name its request used, and whether it left the queue. */
  private readonly pluginJobs = new Map<string, { plugin: string; running: boolean }>();
  constructor(host: EngineHost, metrics: Metrics, modelName: () => string, limits: JobLimits) {
    this.host = host;
    this.metrics = metrics;
    this.modelName = modelName;
    this.limits = limits;
  }

  /** Plugins of running and waiting jobs (vLLM's running_lora_adapters / waiting_lora_adapters). */
  pluginsInUse(): { running: string[]; waiting: string[] } {
    const running = new Set<string>();
    const waiting = new Set<string>();
    for (const j of this.pluginJobs.values()) (j.running ? running : waiting).add(j.plugin);
    return { running: [...running].sort(), waiting: [...waiting].sort() };
  }

  /** Refuses early: 503 while loading, 429 past the queue bound (all of a request's jobs or none). */
  admit(count: number): void {
    if (this.host.state === 'loading') throw unavailable('The model is still loading.');
    if (this.host.state !== 'ready') throw new ApiError(503, `The engine is ${this.host.state}: ${this.host.error ?? ''}`, 'service_unavailable', 'engine_unavailable');
    if (this.host.inFlight + count > this.limits.maxRunning + this.limits.maxWaiting) {
      throw tooMany(`The server is at capacity (${this.host.inFlight} requests in flight); retry later.`, 1);
    }
  }

  /** Starts a job; its events arrive on the returned iterable. Aborting `signal` cancels it. */
  start(spec: JobSpec, signal: AbortSignal): AsyncIterable<JobEvent> {
    const q = new EventQueue<JobEvent>();
    const id = randomUUID();
    const model = { model_name: this.modelName() };
    const t0 = performance.now();
    let tPrev = 0;
    let count = 0;
    const onAbort = () => this.host.cancel(id);
    signal.addEventListener('abort', onAbort, { once: true });
    const job: HostJob = { id, promptIds: spec.promptIds, params: spec.params, view: spec.view, promptLogprobs: spec.promptLogprobs, promptGroup: spec.promptGroup?.key };
    if (spec.promptGroup?.first !== false) this.metrics.promptTokens.inc(model, spec.promptIds.length);
    const plugin = spec.view.trace?.overlays.find((o) => o.type === 'plugin');
    if (plugin) this.pluginJobs.set(id, { plugin: `${model.model_name}:${plugin.id}`, running: false });
    const settled = () => {
      signal.removeEventListener('abort', onAbort);
      this.pluginJobs.delete(id);
    };
    let tScheduled = 0;
    let tFirst = 0;
    this.metrics.requestMaxGenerationTokens.observe(model, spec.params.maxTokens);
    try {
      this.host.submit(job, {
        onScheduled: () => {
          const p = this.pluginJobs.get(id);
          if (p) p.running = true;
          tScheduled = performance.now();
          this.metrics.queueTime.observe(model, (tScheduled - t0) / 1000);
        },
        onToken: (token) => {
          const now = performance.now();
          if (count === 0) {
            tFirst = now;
            this.metrics.ttft.observe(model, (now - t0) / 1000);
            if (tScheduled) this.metrics.prefillTime.observe(model, (now - tScheduled) / 1000);
          } else {
            this.metrics.tpot.observe(model, (now - tPrev) / 1000);
            this.metrics.interToken.observe(model, (now - tPrev) / 1000);
          }
          tPrev = now;
          count++;
          this.metrics.generationTokens.inc(model);
          q.push({ type: 'token', token });
        },
        onPromptLogprobs: (logprobs) => q.push({ type: 'prompt_logprobs', logprobs }),
        onDone: (finish) => {
          settled();
          this.metrics.e2e.observe(model, (performance.now() - t0) / 1000);
          if (spec.promptGroup?.first !== false) this.metrics.requestPromptTokens.observe(model, spec.promptIds.length);
          this.metrics.requestGenerationTokens.observe(model, count);
          if (tFirst) this.metrics.decodeTime.observe(model, (tPrev - tFirst) / 1000);
          this.metrics.success.inc({ ...model, finished_reason: finish.reason });
          q.push({ type: 'done', finish });
          q.end();
        },
        onError: (e) => {
          settled();
          // A request the engine's death took down may be retried: the engine restarts.
          q.fail(
            e instanceof EngineLostError
              ? new ApiError(503, `${e.message}; retry`, 'service_unavailable', 'engine_restarting', null, { 'Retry-After': '5' })
              : new ApiError(500, `generation failed: ${e.message}`, 'server_error', (e as Error & { code?: string }).code ?? 'engine_error'),
          );
        },
        onRejected: (reason, message) => {
          settled();
          q.fail(reason === 'queue_full' ? tooMany(message, 1) : badRequest(message));
        },
      });
    } catch (e) {
      settled();
      throw e;
    }
    return q;
  }
}
