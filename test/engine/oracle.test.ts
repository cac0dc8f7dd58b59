/** The acceptance check from outside: `sfn logits` against the oracle logits of every fixture. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { FIXTURES, ROOT, fixtureDir, oracle } from '../helpers/fixtures.ts';
import { maxAbsDiff } from '../helpers/reference.ts';

const run = promisify(execFile);

describe('sfn logits matches the oracle fixtures', () => {
  for (const name of FIXTURES) {
    it(name, async () => {
      const o = oracle(name);
      const { stdout } = await run(process.execPath, ['bin/sfn.js', 'logits', '--model', fixtureDir(name), '--ids', o.ids.join(','), '--greedy', String(o.greedy.length)], {
        cwd: ROOT,
        maxBuffer: 64 << 20,
      });
      const got = JSON.parse(stdout) as { ids: number[]; logits: number[][]; greedy: number[] };
      assert.deepEqual(got.ids, o.ids);
      assert.equal(got.logits.length, o.logits.length);
      got.logits.forEach((row, i) => assert.ok(maxAbsDiff(row, o.logits[i]) < 1e-4, `${name} position ${i}: ${maxAbsDiff(row, o.logits[i])}`));
      assert.deepEqual(got.greedy, o.greedy);
    });
  }

  it('refuses bad ids with a usage error', async () => {
    await assert.rejects(
      run(process.execPath, [join(ROOT, 'bin/sfn.js'), 'logits', '--model', fixtureDir('A'), '--ids', '1,x']),
      (e: { code: number; stderr: string }) => e.code === 2 && /not a token id/.test(e.stderr),
    );
    await assert.rejects(
      run(process.execPath, [join(ROOT, 'bin/sfn.js'), 'logits', '--model', fixtureDir('A'), '--ids', '1,9999']),
      (e: { code: number; stderr: string }) => e.code === 1 && /outside the vocabulary/.test(e.stderr),
    );
  });
});
