/**
 * The HTTP thread's handle on the engine worker: starts it, tracks loading/ready, submits jobs and routes
 * the worker's events back to each job's handlers.
 */
import type { Worker } from 'node:worker_threads';
import { tsWorker } from '../util/ts-worker.ts';
import type { ModelSpec } from '../model/config.ts';
import type { FloatDtype } from '../model/dtype.ts';
import type { Device, ServingFrom } from '../engine/session.ts';
import type { Finish, GeneratedToken } from '../engine/generate.ts';
import type { HostToWorker, JobParams, ViewSpec, WorkerInit, WorkerStats, WorkerToHost } from './protocol.ts';
import type { PromptLogprob } from '../engine/scheduler.ts';

export interface JobHandlers {
  onToken: (t: GeneratedToken) => void;
  onPromptLogprobs?: (lp: PromptLogprob[]) => void;
  /** The job left the engine's queue for a batch row. */
  onScheduled?: () => void;
  onDone: (f: Finish) => void;
  onError: (e: Error) => void;
  /** The worker refused the job before it started (queue full, invalid). */
  onRejected: (reason: 'queue_full' | 'invalid', message: string) => void;
}

export interface HostJob {
  id: string;
  promptIds: number[];
  params: JobParams;
  view: ViewSpec;
  promptLogprobs?: number;
  /** Jobs with the same key share one prefill of their (identical) prompt. */
  promptGroup?: string;
}

export type HostState = 'loading' | 'ready' | 'failed' | 'closed';

/** The engine's thread died under a request: the request failed through no fault of its own (a 503). */
export class EngineLostError extends Error {
  override name = 'EngineLostError';
}

export interface HostOptions {
  /** Start a new engine thread when a loaded one dies (default true). */
  restart?: boolean;
  /** How long a stats request may wait for the engine's thread (default 10 s). */
  statsTimeoutMs?: number;
}

type Reply = { tensors?: number; kl?: number[]; error?: string; stats?: WorkerStats };

export class EngineHost {
  state: HostState = 'loading';
  spec: ModelSpec | null = null;
  fingerprint: string | null = null;
  /** The largest |value| of each pluggable parameter of the backbone (plugin uploads are checked against it). */
  pluggableMaxAbs: ReadonlyMap<string, number> = new Map();
  /** The device the engine runs on, once ready. */
  device: Device | null = null;
  /** Where the serving session came from on the last load: built from the checkpoint, or opened from the cache. */
  servingFrom: ServingFrom | null = null;
  error: string | null = null;
  /** The first load: resolves when the engine first serves. */
  readonly ready: Promise<void>;
  /** How many times the engine's thread was restarted after dying. */
  restarts = 0;
  private worker!: Worker;
  private readonly jobs = new Map<string, JobHandlers>();
  /** Every request that waits for one reply (stats, export, kl), settled on the reply or when the thread dies. */
  private readonly pending = new Map<number, { resolve: (m: Reply) => void; reject: (e: Error) => void; timer?: NodeJS.Timeout }>();
  private seq = 0;

  private readonly init: WorkerInit;
  private readonly opts: HostOptions;
  constructor(init: WorkerInit, opts: HostOptions = {}) {
    this.init = init;
    this.opts = opts;
    this.ready = this.start();
    this.ready.catch(() => {});
  }

  /** Starts an engine thread; resolves once it has loaded the model. */
  private start(): Promise<void> {
    const worker = tsWorker(new URL('./worker.ts', import.meta.url), this.init);
    this.worker = worker;
    this.state = 'loading';
    return new Promise((resolve, reject) => {
      let loaded = false;
      let lostOnce = false;
      worker.on('message', (m: WorkerToHost) => {
        if (worker !== this.worker) return;
        if (m.type === 'ready') {
          loaded = true;
          // Closed while it loaded: the thread is stopping; it must not read as ready (nor be restarted).
          if (this.state === 'closed') return reject(new EngineLostError('the engine was closed while it loaded'));
          this.state = 'ready';
          this.spec = m.spec;
          this.fingerprint = m.fingerprint;
          this.pluggableMaxAbs = new Map(Object.entries(m.pluggableMaxAbs));
          this.device = m.device;
          this.servingFrom = m.servingFrom;
          resolve();
        } else if (m.type === 'fatal') {
          if (this.state !== 'closed') this.state = 'failed';
          this.error = m.message;
          reject(new Error(m.message));
        } else this.route(m);
      });
      // 'error' and 'exit' both come when a thread dies: act once.
      const lost = (e: Error) => {
        if (lostOnce || worker !== this.worker || this.state === 'closed') return;
        lostOnce = true;
        this.error = e.message;
        this.failAll(new EngineLostError(`the engine stopped: ${e.message}`));
        if (!loaded) {
          this.state = 'failed';
          reject(e);
        } else if (this.opts.restart !== false) {
          this.restarts++;
          this.start().catch(() => {});
        } else this.state = 'failed';
      };
      worker.on('error', lost);
      worker.on('exit', (code) => lost(new Error(`its thread exited (code ${code})`)));
    });
  }

  private failAll(e: Error): void {
    for (const h of this.jobs.values()) h.onError(e);
    this.jobs.clear();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.pending.clear();
  }

  private route(m: WorkerToHost): void {
    if (m.type === 'stats' || m.type === 'exported' || m.type === 'kl') {
      const p = this.pending.get(m.reqId);
      this.pending.delete(m.reqId);
      clearTimeout(p?.timer);
      p?.resolve(m);
      return;
    }
    if (!('id' in m)) return;
    const h = this.jobs.get(m.id);
    if (!h) return;
    switch (m.type) {
      case 'scheduled':
        h.onScheduled?.();
        break;
      case 'token':
        h.onToken(m.token);
        break;
      case 'prompt_logprobs':
        h.onPromptLogprobs?.(m.logprobs);
        break;
      case 'done':
        this.jobs.delete(m.id);
        h.onDone(m.finish);
        break;
      case 'error':
        this.jobs.delete(m.id);
        h.onError(Object.assign(new Error(m.message), { code: m.code }));
        break;
      case 'rejected':
        this.jobs.delete(m.id);
        h.onRejected(m.reason, m.message);
        break;
    }
  }

  private send(m: HostToWorker): void {
    this.worker.postMessage(m);
  }

  /** Sends a request that gets one reply; rejects when the thread dies, or after `timeoutMs`. */
  private request(make: (reqId: number) => HostToWorker, timeoutMs?: number): Promise<Reply> {
    if (this.state !== 'ready') return Promise.reject(new EngineLostError(`the engine is ${this.state}`));
    const reqId = ++this.seq;
    return new Promise((resolve, reject) => {
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              this.pending.delete(reqId);
              reject(new Error(`the engine did not answer within ${timeoutMs} ms`));
            }, timeoutMs);
      this.pending.set(reqId, { resolve, reject, timer });
      this.send(make(reqId));
    });
  }

  submit(job: HostJob, handlers: JobHandlers): void {
    if (this.state !== 'ready') throw new Error(`the engine is ${this.state}`);
    this.jobs.set(job.id, handlers);
    this.send({ type: 'submit', ...job });
  }

  cancel(id: string): void {
    if (this.jobs.has(id)) this.send({ type: 'cancel', id });
  }

  async stats(): Promise<WorkerStats> {
    return (await this.request((reqId) => ({ type: 'stats', reqId }), this.opts.statsTimeoutMs ?? 10_000)).stats!;
  }

  /** Writes a view as a full HF checkpoint directory (in the engine's thread, where the weights are). */
  async export(view: ViewSpec, out: string, dtype: FloatDtype, shardBytes?: number): Promise<{ tensors: number }> {
    const m = await this.request((reqId) => ({ type: 'export', reqId, view, out, dtype, shardBytes }));
    if (m.error) throw new Error(m.error);
    return { tensors: m.tensors! };
  }

  /** Mean KL(base || view) of the next-token distributions over every position of `ids`, per view. */
  async kl(ids: number[], base: ViewSpec, views: ViewSpec[]): Promise<number[]> {
    const m = await this.request((reqId) => ({ type: 'kl', reqId, ids, base, views }));
    if (m.error) throw new Error(m.error);
    return m.kl!;
  }

  get inFlight(): number {
    return this.jobs.size;
  }

  /**
   * Stops the engine: fails what is in flight, asks the thread to finish its current run, release its sessions
   * and exit, and waits up to `waitMs`; only then is the thread terminated (terminating it inside an onnxruntime
   * run aborts the process).
   */
  async close(waitMs = 10_000): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.failAll(new EngineLostError('the engine is closed'));
    const w = this.worker;
    if (w.threadId < 0) return; // already gone (a failed load): nothing to wait for
    const exited = new Promise<boolean>((r) => w.once('exit', () => r(true)));
    w.postMessage({ type: 'stop' } satisfies HostToWorker);
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([exited, new Promise<boolean>((r) => (timer = setTimeout(() => r(false), waitMs)))]);
    clearTimeout(timer);
    if (!done) await w.terminate();
  }
}
