/**
 * bench/stream-read: the streaming-read probe bench:peer measures the machine's ceiling with, built from source
 * with the system's C compiler into a cache directory.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { streamRead, streamReadBinary } from '../../bench/stream-read.ts';

const hasCc = spawnSync('cc', ['--version']).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'sfn-stream-read-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('bench/stream-read', { skip: hasCc ? false : 'no C compiler (cc)' }, () => {
  it('builds once per source into its directory and reuses that binary', () => {
    const first = streamReadBinary(dir);
    assert.ok('path' in first, JSON.stringify(first));
    const built = statSync(first.path).mtimeMs;
    const again = streamReadBinary(dir);
    assert.ok('path' in again);
    assert.equal(again.path, first.path);
    assert.equal(statSync(again.path).mtimeMs, built);
    assert.deepEqual(readdirSync(dir), [first.path.split('/').at(-1)]);
  });

  it('measures a positive bandwidth in 4 KiB and in huge pages, over one thread or two', () => {
    const bin = streamReadBinary(dir);
    assert.ok('path' in bin);
    for (const [threads, huge] of [
      [1, false],
      [2, true],
    ] as const) {
      const gbps = streamRead(bin.path, { mib: 16, threads, reps: 3, huge });
      assert.ok(Number.isFinite(gbps) && gbps > 0, `${gbps} GB/s`);
    }
  });

  it('refuses bad arguments with exit status 2', () => {
    const bin = streamReadBinary(dir);
    assert.ok('path' in bin);
    for (const args of [[], ['0', '1', '1', '0'], ['16', '0', '1', '0'], ['16', '1', '0', '0']]) {
      assert.equal(spawnSync(bin.path, args).status, 2, args.join(' '));
    }
  });

  it("reports the compiler's failure and leaves no file behind", () => {
    const other = mkdtempSync(join(dir, 'fail-'));
    const r = streamReadBinary(other, 'false');
    assert.ok('error' in r && r.error.length > 0, JSON.stringify(r));
    assert.deepEqual(readdirSync(other), []);
  });
});
