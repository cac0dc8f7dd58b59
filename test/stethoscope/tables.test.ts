/**
 * The paper's protocol on the built-in pair (stories260K as A, stories260K-math as B), over HTTP: levels of given
 * outputs against a hand-labelled set, the destruction table (Table 3) and the merge table (Table 1) as jobs,
 * and the same tables from the CLI.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { ROOT } from '../helpers/fixtures.ts';

const LABELLED = readFileSync(join(ROOT, 'test/fixtures/levels/stories260K-labelled.jsonl'), 'utf8')
  .trim()
  .split('\n')
  .map((l) => JSON.parse(l) as { prompt: string; output: string; answer?: string; label: string; source: string });
const PROBLEMS = readFileSync(join(ROOT, 'test/fixtures/math/word-problems.jsonl'), 'utf8').trim().split('\n').slice(0, 8).join('\n') + '\n';
const STORIES = [{ prompt: 'Once upon a time, there was a little dog named' }, { prompt: 'Tom had a red ball. He liked to' }];

type Job = { id: string; status: string; error: string | null; files: string[]; progress: { done: number; total: number }; result: Record<string, any> };

describe('the paper protocol on the built-in pair', () => {
  let srv: RunningServer;
  const dataDir = mkdtempSync(join(tmpdir(), 'sfn-tables-'));
  const post = async (path: string, body: unknown) => {
    const r = await fetch(`${srv.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, body: (await r.json()) as Record<string, any> };
  };
  const wait = async (id: string): Promise<Job> => {
    const t0 = Date.now();
    for (;;) {
      const j = (await (await fetch(`${srv.url}/v1/stethoscope/jobs/${id}`)).json()) as Job;
      if (j.status === 'succeeded' || j.status === 'failed' || Date.now() - t0 > 120_000) return j;
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  before(async () => {
    srv = await startServer(parseServerConfig(['--model', join(ROOT, 'models/stories260K'), '--port', '0', '--data-dir', dataDir, '--model-root', join(ROOT, 'models')], {}), () => {});
    await srv.host.ready;
  });
  after(() => srv.close());

  it('levels: the defaults agree with the hand labels on at least 85% of 179 outputs, and on every correct answer', async () => {
    const items = LABELLED.map(({ label: _l, source: _s, ...it }) => it);
    const { status, body } = await post('/v1/stethoscope/levels', { items });
    assert.equal(status, 200, JSON.stringify(body));
    const judged = body.results.map((r: { level: string }) => r.level);
    const agree = judged.filter((l: string, i: number) => l === LABELLED[i].label).length / LABELLED.length;
    assert.ok(agree >= 0.85, `agreement ${agree}`);
    LABELLED.forEach((x, i) => {
      if (x.label === 'IV') assert.equal(judged[i], 'IV', x.output);
      if (x.label === 'I' && /repetition|to to to/.test(x.source + x.output)) assert.equal(judged[i], 'I', x.output);
    });
    assert.equal(body.scorer.view, srv.host.fingerprint, 'scored under the backbone by default');
  });

  it('levels: a correct answer is IV even where the backbone finds it unlikely; another scoring view can be chosen', async () => {
    const correct = LABELLED.find((x) => x.label === 'IV')!;
    const item = { prompt: correct.prompt, output: correct.output, answer: correct.answer };
    const base = await post('/v1/stethoscope/levels', { items: [item] });
    assert.equal(base.body.results[0].level, 'IV');
    assert.ok(base.body.results[0].metrics.nll > 3, 'the base model does not do arithmetic');
    // Scored under B's weights (every module merged from B): its own answer is likely.
    const all = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'input_layernorm', 'post_attention_layernorm', 'embed_tokens', 'norm'];
    const b = await post('/v1/stethoscope/levels', { items: [item], merge: [{ modules: all, from: 'stories260K-math' }] });
    assert.equal(b.status, 200, JSON.stringify(b.body));
    assert.ok(b.body.results[0].metrics.nll < 0.5 * base.body.results[0].metrics.nll);
    assert.equal(b.body.scorer.overlays[0].type, 'merge');
    const wrongField = await post('/v1/stethoscope/levels', { items: [{ ...item, outptu: 'x' }] });
    assert.equal(wrongField.status, 400);
    assert.equal(wrongField.body.error.param, 'items.0.outptu');
  });

  it('destruction table (Table 3): every method x module, remove as one row, written as JSON, CSV, Markdown and SVG', async () => {
    const r = await post('/v1/stethoscope/destruction', { table: { methods: ['zero', 'reinit', 'remove'], modules: ['q_proj', 'o_proj'], layers: '0-4', prompts: STORIES }, max_tokens: 24 });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const job = await wait(r.body.id);
    assert.equal(job.status, 'succeeded', job.error ?? '');
    assert.deepEqual(job.files.sort(), ['table.csv', 'table.json', 'table.md', 'table.svg']);
    assert.equal(job.progress.done, job.progress.total);
    assert.equal(job.progress.total, (2 + 2 + 1 + 1) * STORIES.length, 'five rows and the intact outputs');
    const rows = job.result.rows as { method: string; module: string | null; levels: string[] }[];
    assert.deepEqual(
      rows.map((x) => `${x.method}:${x.module}`),
      ['zero:q_proj', 'zero:o_proj', 'reinit:q_proj', 'reinit:o_proj', 'remove:null'],
    );
    assert.deepEqual(job.result.intact, ['III', 'III'], 'the intact model continues the stories');
    assert.deepEqual(rows.at(-1)!.levels, ['I', 'I'], 'removing every layer leaves nonsense');
    const md = readFileSync(join(dataDir, 'jobs', job.id, 'table.md'), 'utf8');
    assert.match(md, /^\| Method \| q_proj \| o_proj \|$/m);
    assert.match(md, /^\| Remove \| I I \(whole layers\) \| {2}\|$/m);
    assert.match(readFileSync(join(dataDir, 'jobs', job.id, 'table.svg'), 'utf8'), /^<svg/);
    const csv = readFileSync(join(dataDir, 'jobs', job.id, 'table.csv'), 'utf8');
    assert.ok(csv.startsWith('method,module,layers,prompt,level,reason,text\n'));
    assert.equal(csv.match(/^(intact|zero|reinit|remove),/gm)!.length, job.progress.total, 'one record per output');
  });

  it('destruction table: a bad row is a 400 before any job starts', async () => {
    const r = await post('/v1/stethoscope/destruction', { table: { modules: ['o_proj'], layers: '0-9', prompts: STORIES } });
    assert.equal(r.status, 400);
    assert.match(r.body.error.param, /^table\.layers/);
    const typo = await post('/v1/stethoscope/destruction', { table: { modules: ['o_proj'], layer: '0-1', prompts: STORIES } });
    assert.equal(typo.body.error.param, 'table.layer');
  });

  it('merge table (Table 1): A, B, M1, M2, M3 on word problems, with accuracy, average tokens and levels', async () => {
    const r = await post('/v1/stethoscope/eval', { jsonl: PROBLEMS, table: { from: 'stories260K-math' }, chat: false, max_tokens: 48, levels: true });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    assert.equal(r.body.progress.total, 5 * 8, 'the job says how much work it has from the start');
    const job = await wait(r.body.id);
    assert.equal(job.status, 'succeeded', job.error ?? '');
    assert.equal(job.progress.total, 5 * 8);
    const rows = job.result.rows as { name: string; accuracy: number; avg_generated_tokens: number; levels: Record<string, number> }[];
    assert.deepEqual(
      rows.map((x) => x.name),
      ['A', 'B', 'M1', 'M2', 'M3'],
    );
    assert.equal(rows[0].accuracy, 0, 'the base model never answers');
    assert.equal(rows[1].accuracy, 1, 'the fine-tune answers every problem');
    assert.equal(rows[1].levels.IV, 8);
    assert.equal(rows[0].levels.II, 8, 'stories instead of answers: fluent but irrelevant');
    assert.match(job.result.markdown, /^\| Model \| Merge \| Accuracy \| Avg\. tokens \| I \| II \| III \| IV \|$/m);
    assert.match(job.result.markdown, /^\| B \| all modules \(all\) from stories260K-math \| 100\.0% \|/m);
  });

  it("delta of the pair: every module kind moved, ranked, with the paper's figures", async () => {
    // B by its registered name, as merges accept it.
    assert.equal((await post('/v1/stethoscope/checkpoints', { name: 'math', path: 'stories260K-math' })).status, 201);
    const r = await post('/v1/stethoscope/delta', { b: 'math' });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const job = await wait(r.body.id);
    assert.equal(job.status, 'succeeded', job.error ?? '');
    const kinds = job.result.kinds as { kind: string; rank: number; rel_l2: number }[];
    assert.equal(kinds.length, 11, 'every kind of a tied Llama');
    assert.ok(
      kinds.every((k) => k.rel_l2 > 0.01),
      'a full fine-tune moves every kind',
    );
    assert.equal(kinds.find((k) => k.rank === 1)!.kind, 'embed_tokens');
    assert.ok(kinds.find((k) => k.kind === 'o_proj')!.rel_l2 > kinds.find((k) => k.kind === 'q_proj')!.rel_l2);
    assert.ok(job.files.includes('l2_by_layer.svg') && job.files.includes('histograms.svg'));
  });

  it('sfn destruction-table writes the same table from the command line', async () => {
    const out = mkdtempSync(join(tmpdir(), 'sfn-dt-'));
    const prompts = join(out, 'prompts.jsonl');
    writeFileSync(prompts, STORIES.map((p) => JSON.stringify(p)).join('\n') + '\n');
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [
        'bin/sfn.js',
        'destruction-table',
        '--model',
        'models/stories260K',
        '--methods',
        'zero,remove',
        '--modules',
        'o_proj',
        '--layers',
        '0-4',
        '--prompts',
        prompts,
        '--out',
        out,
        '--max-tokens',
        '24',
      ],
      { cwd: ROOT, maxBuffer: 16 << 20 },
    );
    assert.match(stdout, /intact: III III\./);
    assert.match(stdout, /^\| Remove \| I I \(whole layers\) \|$/m);
    assert.deepEqual(
      JSON.parse(readFileSync(join(out, 'table.json'), 'utf8')).rows.map((x: { method: string }) => x.method),
      ['zero', 'remove'],
    );
  });

  it('sfn merge-table gives the same table from the command line', async () => {
    const out = mkdtempSync(join(tmpdir(), 'sfn-mt-'));
    const data = join(out, 'set.jsonl');
    writeFileSync(data, PROBLEMS);
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['bin/sfn.js', 'merge-table', '--model', 'models/stories260K', '--from', 'models/stories260K-math', '--data', data, '--out', out, '--no-chat', '--max-tokens', '48'],
      { cwd: ROOT, maxBuffer: 16 << 20 },
    );
    assert.match(stdout, /^\| A \| - \| 0\.0% \|/m);
    assert.match(stdout, /^\| B \| all modules \(all\) from models\/stories260K-math \| 100\.0% \|/m);
    assert.deepEqual(
      JSON.parse(readFileSync(join(out, 'table.json'), 'utf8')).rows.map((x: { name: string }) => x.name),
      ['A', 'B', 'M1', 'M2', 'M3'],
    );
  });
});
