/**
 * Long-running stethoscope work (delta reports, evaluations, tables, Freeze runs) as jobs: an id, status,
 * progress, and a result, each record persisted as JSON in the data directory (atomically) so a job can be read
 * after a restart. Jobs run a few at a time from a bounded queue (p-queue); a full queue refuses new ones. A
 * job cancelled while queued never starts; one the server's shutdown stopped, or that was running when the
 * process died, reads "interrupted".
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import PQueue from 'p-queue';
import { writeFileAtomic } from '../model/atomic.ts';

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'interrupted';

const SHUT_DOWN = 'interrupted: the server shut down';

/** Thrown by `start` when the queue holds `maxQueued` jobs already, or the manager is shutting down. */
export class JobQueueFullError extends Error {
  override name = 'JobQueueFullError';
}

export interface JobLimits {
  /** Jobs running at once. */
  concurrency: number;
  /** Jobs waiting to start, at most. */
  maxQueued: number;
}

export interface JobRecord {
  id: string;
  object: 'stethoscope.job';
  kind: string;
  status: JobStatus;
  created: number;
  started: number | null;
  finished: number | null;
  progress: { done: number; total: number; message: string };
  params: unknown;
  result: unknown;
  error: string | null;
}

/** A job's work; `signal` aborts when the job is cancelled (work that cannot stop early may ignore it). */
export type JobWork = (job: JobRecord, dir: string, progress: (done: number, total: number, message?: string) => void, signal: AbortSignal) => Promise<unknown>;

export class JobManager {
  private readonly jobs = new Map<string, JobRecord>();
  private lastSave = new Map<string, number>();
  /** Queued and running jobs' controllers, and the promise that settles when each is recorded as ended. */
  private readonly live = new Map<string, { ac: AbortController; ended: Promise<void> }>();
  private readonly queue: PQueue;
  private stopping = false;

  readonly root: string;
  readonly limits: JobLimits;
  constructor(root: string, limits: JobLimits = { concurrency: 2, maxQueued: 32 }) {
    this.root = root;
    this.limits = limits;
    this.queue = new PQueue({ concurrency: limits.concurrency });
    mkdirSync(root, { recursive: true });
    for (const f of readdirSync(root).filter((n) => n.endsWith('.json'))) {
      try {
        const j = JSON.parse(readFileSync(join(root, f), 'utf8')) as JobRecord;
        if (j.status === 'running' || j.status === 'queued') {
          j.status = 'interrupted';
          j.error = 'interrupted: the server stopped while the job ran';
          j.finished = Math.floor(Date.now() / 1000);
          this.save(j);
        }
        this.jobs.set(j.id, j);
      } catch {
        /* an unreadable record is skipped, not fatal */
      }
    }
  }

  /** Where a job keeps its output files. */
  dir(id: string): string {
    return join(this.root, id);
  }

  get(id: string): JobRecord | undefined {
    return this.jobs.get(id);
  }

  list(): JobRecord[] {
    return [...this.jobs.values()].sort((a, b) => b.created - a.created);
  }

  /** Queues `work` (it starts when a place is free) and returns its record at once. */
  start(kind: string, params: unknown, work: JobWork): JobRecord {
    if (this.stopping) throw new JobQueueFullError('the server is shutting down');
    // Live jobs are running or waiting: past the running places, at most maxQueued wait.
    if (this.live.size >= this.limits.concurrency + this.limits.maxQueued) throw new JobQueueFullError(`${this.live.size} jobs are running or queued`);
    const job: JobRecord = {
      id: `job-${randomUUID().replace(/-/g, '').slice(0, 20)}`,
      object: 'stethoscope.job',
      kind,
      status: 'queued',
      created: Math.floor(Date.now() / 1000),
      started: null,
      finished: null,
      progress: { done: 0, total: 0, message: '' },
      params,
      result: null,
      error: null,
    };
    this.jobs.set(job.id, job);
    this.save(job);
    const dir = this.dir(job.id);
    const ac = new AbortController();
    // A job stopped on request: cancelled, or interrupted by the server's shutdown.
    const stopped = () => (this.stopping ? { status: 'interrupted' as const, error: SHUT_DOWN } : { status: 'cancelled' as const, error: 'cancelled' });
    const run = async () => {
      job.status = 'running';
      job.started = Math.floor(Date.now() / 1000);
      this.save(job);
      try {
        mkdirSync(dir, { recursive: true });
        job.result = await work(
          job,
          dir,
          (done, total, message = '') => {
            job.progress = { done, total, message };
            // Progress is saved at most once a second; the final state always is.
            const now = Date.now();
            if (now - (this.lastSave.get(job.id) ?? 0) > 1000) this.save(job);
          },
          ac.signal,
        );
        job.status = ac.signal.aborted ? stopped().status : 'succeeded';
      } catch (e) {
        Object.assign(job, ac.signal.aborted ? stopped() : { status: 'failed', error: (e as Error).message });
      }
    };
    const ended = this.queue
      .add(run, { signal: ac.signal })
      .catch(() => {
        // Aborted while queued: it never ran.
        Object.assign(job, stopped());
      })
      .then(() => {
        this.live.delete(job.id);
        job.finished = Math.floor(Date.now() / 1000);
        this.save(job);
      });
    this.live.set(job.id, { ac, ended });
    return job;
  }

  /** Asks a queued or running job to stop; false when it has ended. */
  cancel(id: string): boolean {
    const l = this.live.get(id);
    if (!l) return false;
    l.ac.abort();
    return true;
  }

  /** Queued and running jobs. */
  get active(): number {
    return this.live.size;
  }

  /**
   * For shutdown: refuses new jobs, stops every queued and running one, and waits up to `waitMs` for them to
   * end; a job still running then (work that cannot stop mid-step) is recorded as interrupted anyway.
   */
  async shutdown(waitMs: number): Promise<void> {
    this.stopping = true;
    const live = [...this.live.entries()];
    for (const [, l] of live) l.ac.abort();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(live.map(([, l]) => l.ended)), new Promise((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
    for (const [id] of live) {
      const job = this.jobs.get(id)!;
      if (job.status === 'running' || job.status === 'queued') {
        Object.assign(job, { status: 'interrupted', error: SHUT_DOWN, finished: Math.floor(Date.now() / 1000) });
        this.save(job);
      }
    }
  }

  files(id: string): string[] {
    const d = this.dir(id);
    // Files only: a job may leave a directory (a trained checkpoint), which is no downloadable file.
    return existsSync(d)
      ? readdirSync(d, { withFileTypes: true })
          .filter((e) => e.isFile())
          .map((e) => e.name)
          .sort()
      : [];
  }

  private save(job: JobRecord): void {
    this.lastSave.set(job.id, Date.now());
    writeFileAtomic(join(this.root, `${job.id}.json`), JSON.stringify(job, null, 1));
  }
}
