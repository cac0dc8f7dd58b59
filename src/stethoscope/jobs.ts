/**
 * Long-running stethoscope work (delta reports, evaluations) as jobs: an id, status, progress, and a result,
 * each record persisted as JSON in the data directory (atomically) so a job can be read after a restart.
 * A job that was running when the process died is marked failed ("interrupted") at the next start.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../model/atomic.ts';

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

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
  private readonly running = new Map<string, AbortController>();

  constructor(readonly root: string) {
    mkdirSync(root, { recursive: true });
    for (const f of readdirSync(root).filter((n) => n.endsWith('.json'))) {
      try {
        const j = JSON.parse(readFileSync(join(root, f), 'utf8')) as JobRecord;
        if (j.status === 'running' || j.status === 'queued') {
          j.status = 'failed';
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

  /** Starts `work` now (in this process, yielding as it goes) and returns its record at once. */
  start(kind: string, params: unknown, work: JobWork): JobRecord {
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
    this.running.set(job.id, ac);
    void (async () => {
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
        job.status = ac.signal.aborted ? 'cancelled' : 'succeeded';
      } catch (e) {
        job.status = ac.signal.aborted ? 'cancelled' : 'failed';
        job.error = ac.signal.aborted ? 'cancelled' : (e as Error).message;
      }
      this.running.delete(job.id);
      job.finished = Math.floor(Date.now() / 1000);
      this.save(job);
    })();
    return job;
  }

  /** Asks a running job to stop; false when it is not running. */
  cancel(id: string): boolean {
    const ac = this.running.get(id);
    if (!ac) return false;
    ac.abort();
    return true;
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
