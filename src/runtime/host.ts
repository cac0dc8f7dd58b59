/**
 * The HTTP thread's handle on the engine worker: starts it, tracks loading/ready, submits jobs and routes
 * the worker's events back to each job's handlers.
 */
import { Worker } from 'node:worker_threads';
import type { ModelSpec } from '../model/config.ts';
import type { FloatDtype } from '../model/dtype.ts';
import type { Device } from '../engine/engine.ts';
import type { Finish, GeneratedToken } from '../engine/generate.ts';
import type { HostToWorker, JobParams, ViewSpec, WorkerInit, WorkerStats, WorkerToHost } from './protocol.ts';
import type { PromptLogprob } from '../engine/scheduler.ts';

export interface JobHandlers {
  onToken: (t: GeneratedToken) => void;
  onPromptLogprobs?: (lp: PromptLogprob[]) => void;
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
}

export type HostState = 'loading' | 'ready' | 'failed' | 'closed';

export class EngineHost {
  state: HostState = 'loading';
  spec: ModelSpec | null = null;
  fingerprint: string | null = null;
  /** The device the engine runs on, once ready. */
  device: Device | null = null;
  error: string | null = null;
  readonly ready: Promise<void>;
  private readonly worker: Worker;
  private readonly jobs = new Map<string, JobHandlers>();
  private readonly statsWaiters = new Map<number, (s: WorkerStats) => void>();
  private statsSeq = 0;
  private readonly replyWaiters = new Map<number, (m: { tensors?: number; kl?: number[]; error?: string }) => void>();

  constructor(init: WorkerInit) {
    const url = new URL('./worker.ts', import.meta.url).href;
    // The worker is TypeScript too: register tsx inside it before importing it.
    this.worker = new Worker(`import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(url)}); })`, { eval: true, workerData: init });
    this.ready = new Promise((resolve, reject) => {
      this.worker.on('message', (m: WorkerToHost) => {
        if (m.type === 'ready') {
          this.state = 'ready';
          this.spec = m.spec;
          this.fingerprint = m.fingerprint;
          this.device = m.device;
          resolve();
        } else if (m.type === 'fatal') {
          this.state = 'failed';
          this.error = m.message;
          reject(new Error(m.message));
        } else this.route(m);
      });
      this.worker.on('error', (e) => {
        this.state = 'failed';
        this.error = e.message;
        reject(e);
        for (const h of this.jobs.values()) h.onError(e);
        this.jobs.clear();
      });
    });
    this.ready.catch(() => {});
  }

  private route(m: WorkerToHost): void {
    if (m.type === 'stats') {
      this.statsWaiters.get(m.reqId)?.(m.stats);
      this.statsWaiters.delete(m.reqId);
      return;
    }
    if (m.type === 'exported' || m.type === 'kl') {
      this.replyWaiters.get(m.reqId)?.(m);
      this.replyWaiters.delete(m.reqId);
      return;
    }
    if (!('id' in m)) return;
    const h = this.jobs.get(m.id);
    if (!h) return;
    switch (m.type) {
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
        h.onError(new Error(m.message));
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

  submit(job: HostJob, handlers: JobHandlers): void {
    if (this.state !== 'ready') throw new Error(`the engine is ${this.state}`);
    this.jobs.set(job.id, handlers);
    this.send({ type: 'submit', ...job });
  }

  cancel(id: string): void {
    if (this.jobs.has(id)) this.send({ type: 'cancel', id });
  }

  stats(): Promise<WorkerStats> {
    const reqId = ++this.statsSeq;
    return new Promise((resolve) => {
      this.statsWaiters.set(reqId, resolve);
      this.send({ type: 'stats', reqId });
    });
  }

  /** Writes a view as a full HF checkpoint directory (in the engine's thread, where the weights are). */
  export(view: ViewSpec, out: string, dtype: FloatDtype, shardBytes?: number): Promise<{ tensors: number }> {
    const reqId = ++this.statsSeq;
    return new Promise((resolve, reject) => {
      this.replyWaiters.set(reqId, (m) => (m.error ? reject(new Error(m.error)) : resolve({ tensors: m.tensors! })));
      this.send({ type: 'export', reqId, view, out, dtype, shardBytes });
    });
  }

  /** Mean KL(base || view) of the next-token distributions over every position of `ids`, per view. */
  kl(ids: number[], base: ViewSpec, views: ViewSpec[]): Promise<number[]> {
    const reqId = ++this.statsSeq;
    return new Promise((resolve, reject) => {
      this.replyWaiters.set(reqId, (m) => (m.error ? reject(new Error(m.error)) : resolve(m.kl!)));
      this.send({ type: 'kl', reqId, ids, base, views });
    });
  }

  get inFlight(): number {
    return this.jobs.size;
  }

  async close(): Promise<void> {
    this.state = 'closed';
    await this.worker.terminate();
  }
}
