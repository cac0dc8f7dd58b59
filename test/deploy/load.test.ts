/**
 * The load and fault script (bench/load.ts) run briefly: it must work, and its correctness targets must
 * hold even in a short run (no 5xx, dropped streams free their slots, the plugin cache stays under its
 * limit). Its timings and the RSS target are for `npm run bench:load`, not for CI.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { it } from 'node:test';
import { ROOT } from '../helpers/fixtures.ts';

it('bench/load.ts: mixed load, dropped streams and plugin churn, with no 5xx and bounded memory', { timeout: 300_000 }, () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/load.ts', '--clients', '12', '--duration-s', '4', '--warmup-s', '1', '--churn', '4', '--cache-mb', '48'], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.ok(out.load.requests > 0);
  assert.equal(out.load['5xx'], 0);
  assert.equal(out.load.network_errors, 0);
  assert.ok(Object.keys(out.load.by_kind).length === 4, 'backbone and plugin, streaming and not');
  assert.equal(out.targets.slots_freed, true);
  assert.equal(out.targets.cache_bounded, true);
  assert.ok(out.churn.evictions > 0, 'more plugins than the cache holds were used in turn');
});
