/**
 * Background jobs: a bounded queue (a few run at once, a full queue refuses), cancellation of queued and running
 * jobs, records that survive a restart, and shutdown recording what it stopped as interrupted.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { JobManager, JobQueueFullError, type JobRecord } from '../../src/stethoscope/jobs.ts';

/** Work that runs until released or aborted. */
function gate() {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const started: string[] = [];
  const work = async (job: JobRecord, _dir: string, _p: unknown, signal: AbortSignal) => {
    started.push(job.id);
    await Promise.race([released, new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted'))))]);
    return { ok: true };
  };
  return { release, started, work };
}

const settle = async (jobs: JobManager, ids: string[]) => {
  for (let i = 0; i < 200 && ids.some((id) => ['queued', 'running'].includes(jobs.get(id)!.status)); i++) await new Promise((r) => setTimeout(r, 10));
};

describe('job queue', () => {
  it('runs at most `concurrency` jobs, queues the next, and refuses past `maxQueued`', async () => {
    const jobs = new JobManager(mkdtempSync(join(tmpdir(), 'sfn-jobs-')), { concurrency: 1, maxQueued: 1 });
    const g = gate();
    const a = jobs.start('a', {}, g.work);
    const b = jobs.start('b', {}, g.work);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual([a.status, b.status], ['running', 'queued']);
    assert.deepEqual(g.started, [a.id]);
    assert.throws(() => jobs.start('c', {}, g.work), JobQueueFullError);
    g.release();
    await settle(jobs, [a.id, b.id]);
    assert.deepEqual([a.status, b.status], ['succeeded', 'succeeded']);
    assert.deepEqual(g.started, [a.id, b.id]);
  });

  it('cancels a queued job before it starts, and a running one', async () => {
    const root = mkdtempSync(join(tmpdir(), 'sfn-jobs-'));
    const jobs = new JobManager(root, { concurrency: 1, maxQueued: 4 });
    const g = gate();
    const a = jobs.start('a', {}, g.work);
    const b = jobs.start('b', {}, g.work);
    await new Promise((r) => setTimeout(r, 20));
    assert.ok(jobs.cancel(b.id));
    assert.ok(jobs.cancel(a.id));
    await settle(jobs, [a.id, b.id]);
    assert.deepEqual([a.status, b.status], ['cancelled', 'cancelled']);
    assert.equal(b.started, null, 'the queued job never ran');
    assert.deepEqual(g.started, [a.id]);
    assert.equal(jobs.cancel(a.id), false, 'an ended job cannot be cancelled');
    assert.equal(JSON.parse(readFileSync(join(root, `${b.id}.json`), 'utf8')).status, 'cancelled');
    assert.equal(jobs.active, 0);
  });

  it('shutdown interrupts queued and running jobs (and work that ignores its signal), then refuses new ones', async () => {
    const root = mkdtempSync(join(tmpdir(), 'sfn-jobs-'));
    const jobs = new JobManager(root, { concurrency: 2, maxQueued: 4 });
    const g = gate();
    const stubborn = jobs.start('stubborn', {}, () => new Promise(() => {}));
    const a = jobs.start('a', {}, g.work);
    const b = jobs.start('b', {}, g.work);
    await new Promise((r) => setTimeout(r, 20));
    await jobs.shutdown(200);
    for (const j of [stubborn, a, b]) {
      assert.equal(j.status, 'interrupted', j.kind);
      assert.equal(JSON.parse(readFileSync(join(root, `${j.id}.json`), 'utf8')).status, 'interrupted');
    }
    assert.throws(() => jobs.start('late', {}, g.work), /shutting down/);
  });

  it('marks a job that was running when the process died as interrupted at the next start', () => {
    const root = mkdtempSync(join(tmpdir(), 'sfn-jobs-'));
    const first = new JobManager(root);
    const j = first.start('forever', {}, () => new Promise(() => {}));
    const again = new JobManager(root);
    assert.equal(again.get(j.id)!.status, 'interrupted');
  });
});
