/**
 * Continuous batching. Requests are grouped into lanes by view fingerprint (a run feeds one set of
 * weights to all its rows); each lane owns a batched KV cache whose live rows are kept contiguous, so a
 * decode step is one forward over rows [0, n) of that lane. New requests join between steps: their prompt
 * is prefilled alone on their row, in chunks, alternating with decode steps so that neither starves.
 * Lanes take turns round-robin. A cancelled request leaves at the next step. Sequences of one prompt group
 * (a request's n choices of one prompt) prefill it once: the others copy its cache rows and sample their first
 * token from its last logits.
 *
 * Views that replace only o_proj and norms (plugins, o_proj merges, the backbone itself) share one "mixed"
 * lane: its rows may carry up to PLUGIN_SLOTS different views and still decode in one run, so streams on
 * four plugins cost one step, not four. A view that does not fit there (more distinct views, or a full lane)
 * gets a lane of its own, as other views do.
 */
import type { View } from './view.ts';
import type { Engine } from './engine.ts';
import { PLUGIN_SLOTS } from './layout.ts';
import { Sequence, type Finish, type GeneratedToken, type GenerateParams } from './generate.ts';
import type { KvCache } from './kv-cache.ts';
import { checkFinite, logprobs, type TokenLogprob } from './sampler.ts';
import type { ModelTokenizer } from './tokenizer.ts';

export interface PromptLogprob {
  id: number;
  /** null for the first prompt token, which has no context. */
  logprob: number | null;
  top: TokenLogprob[];
}

export interface Job {
  id: string;
  promptIds: number[];
  params: Omit<GenerateParams, 'signal' | 'view'>;
  view: View;
  /** Report prompt tokens' log-probabilities (echo with logprobs); the number of alternatives. */
  promptLogprobs?: number;
  onPromptLogprobs?: (lp: PromptLogprob[]) => void;
  /** The job left the queue for a batch row (its prefill begins). */
  onScheduled?: () => void;
  /** Jobs with the same key have the same prompt and view: one prefills it, the others fork its cache. */
  promptGroup?: string;
  onToken: (t: GeneratedToken) => void;
  onDone: (f: Finish) => void;
  onError: (e: Error) => void;
}

export interface SchedulerOptions {
  /** Rows per lane (sequences decoded together). */
  maxBatch: number;
  /** Sequences admitted at once, over all lanes. */
  maxRunning: number;
  /** Requests allowed to wait; past it, submit throws QueueFullError. */
  maxWaiting: number;
  /** Prompt tokens per prefill run. */
  prefillChunk: number;
  /** Context limit (prompt + generated). */
  maxContext: number;
}

export class QueueFullError extends Error {
  override name = 'QueueFullError';
}

interface Running {
  job: Job;
  seq: Sequence;
  lane: Lane;
  view: View;
  /** Prompt tokens not yet prefilled. */
  pending: number[];
  /** Token to feed at the next decode step. */
  next: number | null;
  cancelled: boolean;
  /** Failed with an error already reported: no onDone. */
  failed: boolean;
  promptLps: PromptLogprob[];
  /** A prompt group's first sequence keeps its prompt's last logits for the others to fork from. */
  promptLogits: Float32Array | null;
}

interface Lane {
  /** The lane's one view; null for the mixed lane, whose rows carry their own. */
  view: View | null;
  cache: KvCache;
  rows: Running[];
}

const MIXED = 'mixed';

export interface SchedulerStats {
  running: number;
  waiting: number;
  /** Lanes by key: a view fingerprint, or 'mixed'. */
  lanes: { key: string; rows: number }[];
  cacheBytes: number;
  steps: number;
}

export class Scheduler {
  private readonly waiting: Job[] = [];
  private readonly lanes = new Map<string, Lane>();
  private readonly byId = new Map<string, Running>();
  private readonly cancelledWaiting = new Set<string>();
  /** The sequence that prefills each prompt group's prompt, while it runs. */
  private readonly groupLeaders = new Map<string, Running>();
  private looping = false;
  private laneTurn = 0;
  private preferPrefill = true;
  steps = 0;

  private readonly engine: Engine;
  private readonly tokenizer: ModelTokenizer | null;
  readonly options: SchedulerOptions;
  constructor(engine: Engine, tokenizer: ModelTokenizer | null, options: SchedulerOptions) {
    this.engine = engine;
    this.tokenizer = tokenizer;
    this.options = options;
  }

  submit(job: Job): void {
    if (this.waiting.length >= this.options.maxWaiting) throw new QueueFullError(`${this.waiting.length} requests are already waiting`);
    if (job.promptIds.length === 0) throw new RangeError('the prompt must have at least one token');
    if (job.promptIds.length >= this.options.maxContext) {
      throw new RangeError(`the prompt has ${job.promptIds.length} tokens; the context limit is ${this.options.maxContext}`);
    }
    this.waiting.push(job);
    this.kick();
  }

  /** Cancels every running and waiting request (shutdown). */
  cancelAll(): void {
    for (const r of this.byId.values()) r.cancelled = true;
    for (const j of this.waiting) this.cancelledWaiting.add(j.id);
  }

  /** Resolves once no step is in progress and none is due. */
  async idle(): Promise<void> {
    while (this.looping) await new Promise((r) => setTimeout(r, 5));
  }

  cancel(id: string): void {
    const r = this.byId.get(id);
    if (r) r.cancelled = true;
    else if (this.waiting.some((j) => j.id === id)) this.cancelledWaiting.add(id);
  }

  stats(): SchedulerStats {
    let cacheBytes = 0;
    for (const l of this.lanes.values()) cacheBytes += l.cache.bytes;
    return {
      running: this.byId.size,
      waiting: this.waiting.length,
      lanes: [...this.lanes.entries()].map(([key, l]) => ({ key, rows: l.rows.length })),
      cacheBytes,
      steps: this.steps,
    };
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      while (this.waiting.length || this.byId.size) {
        this.admit();
        this.sweep();
        const did = await this.step();
        // Let messages in (new requests, cancellations) between steps.
        await new Promise((r) => setImmediate(r));
        if (!did && !this.waiting.length) break;
      }
    } finally {
      this.looping = false;
      if (this.waiting.length || this.byId.size) this.kick();
    }
  }

  private admit(): void {
    for (let i = 0; i < this.waiting.length && this.byId.size < this.options.maxRunning; ) {
      const job = this.waiting[i];
      if (this.cancelledWaiting.delete(job.id)) {
        this.waiting.splice(i, 1);
        job.onDone({ reason: 'abort', tokens: 0 });
        continue;
      }
      const leader = job.promptGroup === undefined ? undefined : this.groupLeaders.get(job.promptGroup);
      // The group's prompt is still being prefilled: wait for it rather than prefill it again.
      if (leader && !leader.promptLogits) {
        i++;
        continue;
      }
      const fp = job.view.fingerprint;
      let key = fp;
      if (this.engine.sharesRuns(job.view)) {
        const mixed = this.lanes.get(MIXED);
        const views = new Set(mixed?.rows.map((r) => r.view.fingerprint)).add(fp);
        if (!mixed || (mixed.rows.length < this.options.maxBatch && views.size <= PLUGIN_SLOTS)) key = MIXED;
      }
      let lane = this.lanes.get(key);
      if (lane && lane.rows.length >= this.options.maxBatch) {
        i++;
        continue;
      }
      if (!lane) {
        lane = { view: key === MIXED ? null : job.view, cache: this.engine.newCache(this.options.maxBatch), rows: [] };
        this.lanes.set(key, lane);
      }
      this.waiting.splice(i, 1);
      const row = lane.rows.length;
      lane.cache.reset(row);
      const r: Running = {
        job,
        seq: new Sequence(job.params, this.tokenizer),
        lane,
        view: job.view,
        pending: job.promptIds.slice(),
        next: null,
        cancelled: false,
        failed: false,
        promptLps: [],
        promptLogits: null,
      };
      lane.rows.push(r);
      this.byId.set(job.id, r);
      job.onScheduled?.();
      if (leader) this.fork(leader, r, row);
      else if (job.promptGroup !== undefined) this.groupLeaders.set(job.promptGroup, r);
    }
  }

  /** Starts `r` from its group leader's prefilled prompt: the cache rows copied, the first token sampled from its logits. */
  private fork(leader: Running, r: Running, row: number): void {
    const n = r.job.promptIds.length;
    r.lane.cache.reserve(n);
    r.lane.cache.copyPrefix(leader.lane.cache, leader.lane.rows.indexOf(leader), row, n);
    r.pending = [];
    if (r.job.promptLogprobs !== undefined) {
      r.promptLps = leader.promptLps.slice();
      r.job.onPromptLogprobs?.(r.promptLps);
    }
    if (!r.seq.finish) this.emit(r, leader.promptLogits!);
  }

  /** Removes finished and cancelled sequences, moving the lane's last row into each hole. */
  private sweep(): void {
    for (const [fp, lane] of this.lanes) {
      for (let i = 0; i < lane.rows.length; ) {
        const r = lane.rows[i];
        // A sequence finished before its first token (max_tokens 0) still owes its prompt's logprobs.
        const owesPrompt = r.pending.length > 0 && r.job.promptLogprobs !== undefined;
        if (!r.cancelled && (!r.seq.finish || owesPrompt)) {
          i++;
          continue;
        }
        if (r.cancelled) r.seq.abort();
        const last = lane.rows.length - 1;
        if (i !== last) {
          lane.cache.moveRow(last, i);
          lane.rows[i] = lane.rows[last];
        }
        lane.rows.pop();
        lane.cache.reset(last);
        this.byId.delete(r.job.id);
        // Group members still waiting prefill the prompt themselves.
        if (r.job.promptGroup !== undefined && this.groupLeaders.get(r.job.promptGroup) === r) this.groupLeaders.delete(r.job.promptGroup);
        if (!r.failed) r.job.onDone(r.seq.finish!);
      }
      if (lane.rows.length === 0) this.lanes.delete(fp);
    }
  }

  /** One forward: a prefill chunk or a decode step, alternating when both are due. */
  private async step(): Promise<boolean> {
    const prefill = [...this.lanes.values()].flatMap((l) => l.rows).find((r) => r.pending.length > 0 && !r.cancelled);
    const decodeLanes = [...this.lanes.values()].filter((l) => l.rows.some((r) => r.next !== null && !r.cancelled && !r.seq.finish));
    if (!prefill && decodeLanes.length === 0) return false;
    const doPrefill = prefill && (this.preferPrefill || decodeLanes.length === 0);
    this.preferPrefill = !doPrefill;
    this.steps++;
    const lane = doPrefill ? null : decodeLanes[this.laneTurn++ % decodeLanes.length];
    try {
      if (doPrefill) await this.prefill(prefill);
      else await this.decode(lane!);
    } catch (e) {
      // A failed run fails the requests that took part in it, never the scheduler.
      const took = doPrefill ? [prefill] : lane!.rows.filter((r) => r.next !== null && !r.cancelled && !r.seq.finish);
      for (const r of took) this.fail(r, e as Error);
    }
    return true;
  }

  private fail(r: Running, e: Error): void {
    r.cancelled = true;
    r.failed = true;
    r.seq.abort();
    r.job.onError(e);
  }

  private async prefill(r: Running): Promise<void> {
    const row = r.lane.rows.indexOf(r);
    const chunk = r.pending.splice(0, this.options.prefillChunk);
    const wantAll = r.job.promptLogprobs !== undefined;
    const [out] = await this.engine.forward(r.lane.cache, [chunk], { view: r.view, firstRow: row, logits: wantAll ? 'all' : 'last' });
    if (wantAll) {
      // Position t's logits score prompt token t+1; the first prompt token has no score.
      const done = r.job.promptIds.length - r.pending.length - chunk.length;
      if (done === 0) r.promptLps.push({ id: chunk[0], logprob: null, top: [] });
      for (let i = 0; i < out.length; i++) {
        const t = done + i + 1;
        checkFinite(out[i], `prompt token ${t}`);
        if (t < r.job.promptIds.length) {
          const id = r.job.promptIds[t];
          r.promptLps.push({ id, ...logprobs(out[i], id, r.job.promptLogprobs!) });
        }
      }
      if (r.pending.length === 0) r.job.onPromptLogprobs?.(r.promptLps);
    }
    if (r.pending.length === 0 && this.groupLeaders.get(r.job.promptGroup!) === r) r.promptLogits = out[out.length - 1].slice();
    // max_tokens 0 (prompt scoring) finishes before its first token.
    if (r.pending.length === 0 && !r.seq.finish) this.emit(r, out[out.length - 1]);
  }

  private async decode(lane: Lane): Promise<void> {
    const rows = lane.rows.map((r) => (r.next !== null && !r.cancelled && !r.seq.finish ? [r.next] : []));
    const out = await this.engine.forward(lane.cache, rows, lane.view ? { view: lane.view, firstRow: 0 } : { rowViews: lane.rows.map((r) => r.view), firstRow: 0 });
    lane.rows.forEach((r, i) => {
      if (rows[i].length) this.emit(r, out[i][0]);
    });
  }

  private emit(r: Running, logits: Float32Array): void {
    checkFinite(logits, `generated token ${r.seq.generated.length}`);
    const tok = r.seq.accept(logits);
    r.next = tok.id;
    const length = r.lane.cache.lengths[r.lane.rows.indexOf(r)];
    if (!r.seq.finish && length + 1 >= this.options.maxContext) r.seq.finish = { reason: 'length', tokens: r.seq.generated.length };
    r.job.onToken(tok);
  }
}
