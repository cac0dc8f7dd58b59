/** The data directory's upkeep: quarantine pruned by age, an unreadable checkpoint registry set aside loudly, the store's lock. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PluginStore } from '../../src/plugins/store.ts';
import { HOST, withLockFile } from '../../src/plugins/store-lock.ts';
import { CheckpointRegistry } from '../../src/stethoscope/checkpoints.ts';

describe('data directory upkeep', () => {
  it('deletes quarantined entries older than the retention at the scan, and keeps younger ones', async () => {
    const root = mkdtempSync(join(tmpdir(), 'sfn-quarantine-'));
    const q = join(root, 'quarantine');
    mkdirSync(q, { recursive: true });
    const day = 24 * 3600_000;
    writeFileSync(join(q, `${Date.now() - 8 * day}-old.json`), 'x');
    mkdirSync(join(q, `${Date.now() - 9 * day}-old-dir`));
    writeFileSync(join(q, `${Date.now() - day}-young.json`), 'y');
    const logs: string[] = [];
    await new PluginStore(root, (s) => logs.push(s), 7 * day).scan();
    assert.deepEqual(
      readdirSync(q).map((n) => n.replace(/^\d+-/, '')),
      ['young.json'],
    );
    assert.equal(logs.filter((l) => /deleted .* from quarantine/.test(l)).length, 2);
  });

  it('moves an unreadable checkpoint registry to quarantine with a warning instead of overwriting it later', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sfn-registry-'));
    writeFileSync(join(dir, 'checkpoints.json'), '[{"name": "a", "path": ');
    const logs: string[] = [];
    const reg = new CheckpointRegistry(dir, (s) => logs.push(s));
    assert.deepEqual(reg.list(), []);
    assert.ok(!existsSync(join(dir, 'checkpoints.json')));
    const kept = readdirSync(join(dir, 'quarantine'));
    assert.equal(kept.length, 1);
    assert.equal(readFileSync(join(dir, 'quarantine', kept[0]), 'utf8'), '[{"name": "a", "path": ');
    assert.match(logs.join('\n'), /WARNING: the checkpoint registry .* is unreadable/);
    reg.register('b', '/models/b');
    assert.deepEqual(
      JSON.parse(readFileSync(join(dir, 'checkpoints.json'), 'utf8')).map((e: { name: string }) => e.name),
      ['b'],
    );
    // A well-formed file of the wrong shape is set aside too.
    writeFileSync(join(dir, 'checkpoints.json'), '{"b": 1}');
    assert.deepEqual(new CheckpointRegistry(dir, () => {}).list(), []);
    assert.equal(readdirSync(join(dir, 'quarantine')).length, 2);
  });

  it("the store lock serializes holders without blocking the thread, and breaks a dead holder's lock at once", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sfn-lock-'));
    const path = join(dir, 'store.lock');
    const events: string[] = [];
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 5);
    const hold = (name: string) =>
      withLockFile(
        path,
        'test',
        () => {},
        async () => {
          events.push(`${name} in`);
          await new Promise((r) => setTimeout(r, 100));
          events.push(`${name} out`);
        },
      );
    // Two at once, then a third once the first is inside (it finds this very process named as the holder).
    const a = hold('a');
    const b = hold('b');
    while (!events.length) await new Promise((r) => setTimeout(r, 5));
    await Promise.all([a, b, hold('c')]);
    clearInterval(ticker);
    for (let i = 0; i < events.length; i += 2) assert.equal(events[i].split(' ')[0], events[i + 1].split(' ')[0], `overlap: ${events.join(', ')}`);
    assert.ok(ticks > 20, 'the event loop kept turning while holders waited');
    assert.ok(!existsSync(path) && !existsSync(`${path}.owner`), 'nothing left behind');
    // A lock directory whose owner is a process of this host that has exited.
    const dead = await new Promise<number>((resolve) => {
      const c = spawn(process.execPath, ['-e', '0']);
      c.once('exit', () => resolve(c.pid!));
    });
    mkdirSync(path);
    writeFileSync(`${path}.owner`, `${HOST}~${dead}`);
    const logs: string[] = [];
    const t0 = Date.now();
    assert.equal(
      await withLockFile(
        path,
        'test',
        (s) => logs.push(s),
        () => 'got it',
      ),
      'got it',
    );
    assert.ok(Date.now() - t0 < 5000, 'broken at once, not after the stale period');
    assert.match(logs.join(), /breaking a lock left by .*exited/);
  });
});
