/** The destruction probe over HTTP: intact vs destroyed outputs with levels, and the sweep heatmap job (and its CLI twin). */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { meanKl } from '../../src/stethoscope/damage.ts';
import { fixtureDir, oracle, ROOT } from '../helpers/fixtures.ts';

describe('destruction probe', () => {
  let srv: RunningServer;
  const post = (path: string, body: unknown) => fetch(`${srv.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  before(async () => {
    srv = await startServer(parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--data-dir', mkdtempSync(join(tmpdir(), 'sfn-destr-'))], {}), () => {});
    await srv.host.ready;
  });
  after(() => srv.close());

  type Side = { text: string; level: string; reason: string; metrics: { tokens: number; repetition: number; nll: number; pmi: number; matched: boolean | null } };

  it('runs prompts through the intact and the destroyed view, with levels and the metrics behind them', async () => {
    const r = await post('/v1/stethoscope/destruction', {
      destroy: [{ method: 'zero', modules: ['o_proj', 'M3'], layers: 'all' }],
      prompts: [{ prompt: 'Hello, world!', answer: '7' }, { messages: [{ role: 'user', content: 'hi' }] }],
      max_tokens: 12,
    });
    assert.equal(r.status, 200, await r.clone().text());
    const body = (await r.json()) as { results: { intact: Side; destroyed: Side }[] };
    assert.equal(body.results.length, 2);
    for (const { intact, destroyed } of body.results) {
      for (const side of [intact, destroyed]) {
        assert.ok(['I', 'II', 'III', 'IV'].includes(side.level));
        assert.equal(typeof side.reason, 'string');
        assert.ok(side.metrics.tokens > 0 && side.metrics.nll > 0);
      }
      assert.notEqual(intact.text, destroyed.text);
    }
    assert.equal(body.results[0].intact.metrics.matched, false);
    assert.equal(body.results[1].intact.metrics.matched, null);
    // The intact output's NLL, recomputed by scoring prompt + output through /v1/completions.
    const first = body.results[0].intact;
    const promptIds = (
      (await (await post('/v1/completions', { model: 'A', prompt: 'Hello, world!', max_tokens: 12, temperature: 0, logprobs: 0, return_tokens_as_token_ids: true })).json()) as {
        choices: { text: string; logprobs: { tokens: string[]; token_logprobs: number[] } }[];
      }
    ).choices[0];
    assert.equal(promptIds.text, first.text);
    const nll = -promptIds.logprobs.token_logprobs.reduce((a, x) => a + x, 0) / promptIds.logprobs.token_logprobs.length;
    assert.ok(Math.abs(nll - first.metrics.nll) < 1e-4, `${nll} vs ${first.metrics.nll}`);

    // `sfn probe` runs the same comparison over an engine in its own process: the same outputs and levels.
    const file = join(mkdtempSync(join(tmpdir(), 'sfn-probe-cli-')), 'prompts.jsonl');
    writeFileSync(file, '{"prompt": "Hello, world!", "answer": "7"}\n{"messages": [{"role": "user", "content": "hi"}]}\n');
    const args = [
      'bin/sfn.js',
      'probe',
      '--model',
      fixtureDir('A'),
      '--prompts',
      file,
      '--destroy',
      JSON.stringify([{ method: 'zero', modules: ['o_proj', 'M3'], layers: 'all' }]),
      '--max-tokens',
      '12',
    ];
    const cli = JSON.parse((await promisify(execFile)(process.execPath, args, { cwd: ROOT })).stdout) as typeof body;
    for (const [i, r] of cli.results.entries()) {
      for (const side of ['intact', 'destroyed'] as const) {
        assert.equal(r[side].text, body.results[i][side].text, `${i} ${side}`);
        assert.equal(r[side].level, body.results[i][side].level, `${i} ${side}`);
        assert.ok(Math.abs(r[side].metrics.nll - body.results[i][side].metrics.nll) < 1e-5);
      }
    }
  });

  it('sweeps module kinds x layer windows into a KL heatmap, matching the D_zero oracle for o_proj 1-2', async () => {
    const o = oracle('A');
    const r = await post('/v1/stethoscope/destruction', { sweep: { method: 'zero', modules: ['o_proj', 'up_proj'], window: 2, stride: 1, ids: o.ids } });
    assert.equal(r.status, 202, await r.clone().text());
    const { id } = (await r.json()) as { id: string };
    let job: { status: string; files: string[]; result: { cells: { module: string; layers: string; kl: number }[] }; error: string | null };
    const t0 = Date.now();
    do {
      await new Promise((res) => setTimeout(res, 50));
      job = (await (await fetch(`${srv.url}/v1/stethoscope/jobs/${id}`)).json()) as typeof job;
    } while (job.status !== 'succeeded' && job.status !== 'failed' && Date.now() - t0 < 60000);
    assert.equal(job.status, 'succeeded', job.error ?? '');
    assert.deepEqual(job.files, ['sweep.json', 'sweep.svg']);
    assert.equal(job.result.cells.length, 2 * 4);
    for (const c of job.result.cells) assert.ok(c.kl >= 0);
    const cell = job.result.cells.find((c) => c.module === 'o_proj' && c.layers === '1-2')!;
    const dz = oracle('D_zero_o_proj_1-2');
    const want = meanKl(
      o.logits.map((r) => Float32Array.from(r)),
      dz.logits.map((r) => Float32Array.from(r)),
    );
    assert.ok(Math.abs(cell.kl - want) < 1e-4 * Math.max(1, want), `${cell.kl} vs ${want}`);
    const svg = await (await fetch(`${srv.url}/v1/stethoscope/jobs/${id}/files/sweep.svg`)).text();
    assert.match(svg, /^<svg/);

    // `sfn destruction-sweep` runs the same function over an engine in its own process: the same cells.
    const out = mkdtempSync(join(tmpdir(), 'sfn-sweep-cli-'));
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['bin/sfn.js', 'destruction-sweep', '--model', fixtureDir('A'), '--method', 'zero', '--modules', 'o_proj,up_proj', '--window', '2', '--stride', '1', '--ids', o.ids.join(','), '--out', out],
      { cwd: ROOT },
    );
    const cli = JSON.parse(stdout) as typeof job.result;
    assert.deepEqual(
      cli.cells.map((c) => [c.module, c.layers]),
      job.result.cells.map((c) => [c.module, c.layers]),
    );
    cli.cells.forEach((c, i) => assert.ok(Math.abs(c.kl - job.result.cells[i].kl) <= 1e-6 * Math.max(1, c.kl), `${c.module} ${c.layers}: ${c.kl} vs ${job.result.cells[i].kl}`));
    assert.deepEqual(JSON.parse(readFileSync(join(out, 'sweep.json'), 'utf8')), cli);
    assert.match(readFileSync(join(out, 'sweep.svg'), 'utf8'), /^<svg/);
  });

  it('refuses a probe without a destroy spec or with a bad one', async () => {
    assert.equal((await post('/v1/stethoscope/destruction', { prompts: [{ prompt: 'x' }] })).status, 400);
    const bad = await post('/v1/stethoscope/destruction', { destroy: [{ method: 'zero', modules: ['o_proj'], layers: '0-99' }], prompts: [{ prompt: 'x' }] });
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { error: { param: string } }).error.param, 'destroy.0.layers');
  });
});
