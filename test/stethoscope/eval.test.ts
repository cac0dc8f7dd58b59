/** Evaluation jobs: over HTTP (a persisted job) and through `sfn eval`, checked against chat completions. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { parseJsonl } from '../../src/stethoscope/eval.ts';
import { fixtureDir, ROOT } from '../helpers/fixtures.ts';

const run = promisify(execFile);
const SET = [
  { id: 'q1', prompt: 'Hello, world!', answer: '3' },
  { id: 'q2', messages: [{ role: 'user', content: 'What is 1+2?' }], answer: '3' },
  { id: 'q3', prompt: 'abc', answer: '12' },
];
const jsonl = SET.map((x) => JSON.stringify(x)).join('\n') + '\n';

describe('JSONL sets', () => {
  it('name the bad line', () => {
    assert.throws(() => parseJsonl('{"id":1,"prompt":"x","answer":"1"}\n{oops}\n'), /line 2: invalid JSON at character 2$/);
    assert.throws(() => parseJsonl('{"id":1,"answer":"1"}\n'), /line 1: give exactly one of "prompt" and "messages"/);
    assert.throws(() => parseJsonl('{"id":1,"prompt":"x","answer":"1"}\n{"id":1,"prompt":"y","answer":"2"}\n'), /duplicate id/);
    assert.throws(() => parseJsonl('\n\n'), /no items/);
  });
});

describe('evaluation jobs', () => {
  let srv: RunningServer;
  const dataDir = mkdtempSync(join(tmpdir(), 'sfn-eval-'));
  const cfg = parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--data-dir', dataDir], {});
  const post = (path: string, body: unknown) => fetch(`${srv.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  type Job = { status: string; error: string | null; files: string[]; progress: { done: number; total: number }; result: { items: number; accuracy: number; avg_generated_tokens: number } };
  const wait = async (id: string): Promise<Job> => {
    const t0 = Date.now();
    for (;;) {
      const j = (await (await fetch(`${srv.url}/v1/stethoscope/jobs/${id}`)).json()) as Job;
      if (j.status === 'succeeded' || j.status === 'failed' || Date.now() - t0 > 60000) return j;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  before(async () => {
    srv = await startServer(cfg, () => {});
    await srv.host.ready;
  });
  after(() => srv.close());

  it('runs a set under a view, with outputs equal to greedy chat completions, and persists its results', async () => {
    const r = await post('/v1/stethoscope/eval', { jsonl, max_tokens: 8, levels: true, destroy: [{ method: 'zero', modules: ['o_proj'], layers: '1-2' }] });
    assert.equal(r.status, 202, await r.clone().text());
    const { id, progress } = (await r.json()) as { id: string; progress: { done: number; total: number } };
    assert.equal(progress.total, 3, 'the job says how much work it has from the start');
    const job = await wait(id);
    assert.equal(job.status, 'succeeded', job.error ?? '');
    assert.deepEqual(job.files, ['results.jsonl', 'summary.json']);
    assert.equal(job.progress.done, 3);
    const results = readFileSync(join(dataDir, 'jobs', id, 'results.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l)) as { id: string; output: string; correct: boolean; tokens: number; level: { level: string } }[];
    assert.deepEqual(
      results.map((x) => x.id),
      ['q1', 'q2', 'q3'],
    );
    for (const [i, item] of SET.entries()) {
      const messages = item.messages ?? [{ role: 'user', content: item.prompt }];
      const chat = (await (await post('/v1/chat/completions', { model: 'A', messages, max_tokens: 8, temperature: 0, destroy: [{ method: 'zero', modules: ['o_proj'], layers: '1-2' }] })).json()) as {
        choices: { message: { content: string } }[];
        usage: { completion_tokens: number };
      };
      assert.equal(results[i].output, chat.choices[0].message.content, item.id);
      assert.equal(results[i].tokens, chat.usage.completion_tokens);
      assert.ok(['I', 'II', 'III', 'IV'].includes(results[i].level.level));
    }
    assert.equal(job.result.accuracy, results.filter((x) => x.correct).length / 3);
    // Readable after a restart.
    await srv.close();
    srv = await startServer(cfg, () => {});
    const again = (await (await fetch(`${srv.url}/v1/stethoscope/jobs/${id}`)).json()) as Job;
    assert.equal(again.status, 'succeeded');
    assert.equal(again.result.items, 3);
    await srv.host.ready;
  });

  it('runs in reasoning mode with budget forcing', async () => {
    const r = await post('/v1/stethoscope/eval', { items: SET.slice(0, 1), max_tokens: 10, mode: 'reasoning', max_thinking_tokens: 4 });
    const { id } = (await r.json()) as { id: string };
    const job = await wait(id);
    assert.equal(job.status, 'succeeded', job.error ?? '');
    const [res] = readFileSync(join(dataDir, 'jobs', id, 'results.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l)) as { reasoning: string | null }[];
    assert.equal(typeof res.reasoning, 'string');
  });

  it('refuses a bad set with a 400 naming the item', async () => {
    const r = await post('/v1/stethoscope/eval', { items: [{ id: 1, answer: '1' }] });
    assert.equal(r.status, 400);
    assert.match(((await r.json()) as { error: { message: string } }).error.message, /items\.0/);
  });

  it('sfn eval writes the same results in this process, with a progress bar', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sfn-eval-cli-'));
    writeFileSync(join(dir, 'set.jsonl'), jsonl);
    const { stdout, stderr } = await run(process.execPath, ['bin/sfn.js', 'eval', '--model', fixtureDir('A'), '--data', join(dir, 'set.jsonl'), '--out', join(dir, 'out'), '--max-tokens', '8'], {
      cwd: ROOT,
    });
    assert.match(stderr, /3\/3/);
    const summary = JSON.parse(stdout) as { items: number; accuracy: number };
    assert.equal(summary.items, 3);
    const lines = readFileSync(join(dir, 'out', 'results.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l)) as { output: string }[];
    const chat = (await (await post('/v1/chat/completions', { model: 'A', messages: SET[1].messages, max_tokens: 8, temperature: 0 })).json()) as { choices: { message: { content: string } }[] };
    assert.equal(lines[1].output, chat.choices[0].message.content);
  });
});
