/**
 * The Freeze stethoscope over HTTP on the built-in model: an o_proj-only run on word problems that the base
 * model cannot answer, served at once as a plugin and evaluated on held-out problems; cancellation; the
 * paper's Table 2 as a job; and the 400s of a bad request.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { ROOT } from '../helpers/fixtures.ts';

const TRAIN = readFileSync(join(ROOT, 'test/fixtures/math/train.jsonl'), 'utf8');
const HELD_OUT = readFileSync(join(ROOT, 'test/fixtures/math/word-problems.jsonl'), 'utf8');

type Job = { id: string; status: string; error: string | null; files: string[]; progress: { done: number; total: number; message: string }; result: Record<string, any> };

describe('Freeze over HTTP on the built-in model', () => {
  let srv: RunningServer;
  const dataDir = mkdtempSync(join(tmpdir(), 'sfn-freeze-http-'));
  const post = async (path: string, body: unknown) => {
    const r = await fetch(`${srv.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, body: (await r.json()) as Record<string, any> };
  };
  const job = async (id: string) => (await (await fetch(`${srv.url}/v1/stethoscope/jobs/${id}`)).json()) as Job;
  const wait = async (id: string, limitMs = 300_000): Promise<Job> => {
    const t0 = Date.now();
    for (;;) {
      const j = await job(id);
      if (!['queued', 'running'].includes(j.status) || Date.now() - t0 > limitMs) return j;
      await new Promise((r) => setTimeout(r, 200));
    }
  };

  before(async () => {
    srv = await startServer(parseServerConfig(['--model', join(ROOT, 'models/stories260K'), '--port', '0', '--data-dir', dataDir], {}), () => {});
    await srv.host.ready;
  });
  after(() => srv.close());

  it('trains o_proj alone on word problems; the plugin serves at once and answers held-out problems the base model cannot', async () => {
    const r = await post('/v1/stethoscope/freeze', { kinds: ['o_proj'], data: TRAIN, steps: 120, lr: 5e-3, batch: 16, warmup: 10, schedule: 'cosine', save_as: 'math-oproj' });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const j = await wait(r.body.id);
    assert.equal(j.status, 'succeeded', j.error ?? '');
    assert.equal(j.progress.done, 120);
    assert.match(j.progress.message, /step 120\/120, loss \d/);
    assert.ok(j.result.final_loss < j.result.first_loss / 4, `loss ${j.result.first_loss} -> ${j.result.final_loss}`);
    assert.equal(j.result.parameters, 5 * 64 * 64, 'five o_proj matrices of 64 x 64');
    assert.deepEqual(j.files, ['plugin.checkpoint.safetensors', 'plugin.loss.csv', 'plugin.loss.json', 'plugin.loss.svg', 'plugin.plan.json', 'plugin.safetensors']);
    const curve = JSON.parse(readFileSync(join(dataDir, 'jobs', j.id, 'plugin.loss.json'), 'utf8'));
    assert.equal(curve.losses.length, 120);
    assert.equal(j.result.plugin.id, 'math-oproj');

    const models = (await (await fetch(`${srv.url}/v1/models`)).json()) as { data: { id: string }[] };
    assert.ok(models.data.some((m) => m.id === 'stories260K:math-oproj'));
    const accuracy = async (model: string) => {
      const e = await post('/v1/stethoscope/eval', { model, jsonl: HELD_OUT, chat: false, max_tokens: 48 });
      assert.equal(e.status, 202, JSON.stringify(e.body));
      const done = await wait(e.body.id);
      assert.equal(done.status, 'succeeded', done.error ?? '');
      return done.result.accuracy as number;
    };
    const [base, tuned] = [await accuracy('stories260K'), await accuracy('stories260K:math-oproj')];
    assert.equal(base, 0);
    assert.ok(tuned >= 0.1, `held-out accuracy ${tuned}`);
  });

  it('cancels a running job with DELETE, and refuses to cancel a finished one', async () => {
    const r = await post('/v1/stethoscope/freeze', { kinds: ['norms'], data: TRAIN, steps: 100000 });
    assert.equal(r.status, 202);
    while ((await job(r.body.id)).progress.done < 2) await new Promise((res) => setTimeout(res, 100));
    const del = await fetch(`${srv.url}/v1/stethoscope/jobs/${r.body.id}`, { method: 'DELETE' });
    assert.equal(del.status, 202);
    const j = await wait(r.body.id, 30_000);
    assert.equal(j.status, 'cancelled');
    const again = await fetch(`${srv.url}/v1/stethoscope/jobs/${r.body.id}`, { method: 'DELETE' });
    assert.equal(again.status, 409);
  });

  it('runs Table 2: each row trained and evaluated, F3 (q/k/v, not pluggable) through its checkpoint', async () => {
    const small = TRAIN.split('\n').slice(0, 64).join('\n');
    const evalSet = HELD_OUT.split('\n').slice(0, 4).join('\n');
    const r = await post('/v1/stethoscope/freeze', {
      data: small,
      kinds: ['norms'],
      steps: 8,
      lr: 3e-3,
      table: {
        rows: [
          { name: 'F1', kinds: ['norms'] },
          { name: 'F3', kinds: ['embed', 'head', 'o_proj', 'norms', 'qkv'] },
        ],
        eval: evalSet,
        max_tokens: 24,
        chat: false,
      },
    });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const j = await wait(r.body.id);
    assert.equal(j.status, 'succeeded', j.error ?? '');
    assert.deepEqual(
      j.result.rows.map((x: { name: string }) => x.name),
      ['A', 'F1', 'F3'],
    );
    assert.ok(j.result.rows[2].parameters > j.result.rows[1].parameters);
    assert.match(j.result.markdown, /^\| Run \| Trained \| #Param \| Steps\/s \| Final loss \| Accuracy \| Avg\. tokens \|$/m);
    assert.ok(j.files.includes('loss.svg') && j.files.includes('table.md') && j.files.includes('F1.safetensors'));
  });

  it('answers a bad request with a 400 naming the field', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ kinds: ['o_prj'], data: TRAIN }, 'kinds'],
      [{ kinds: ['qkv'], data: TRAIN, save_as: 'x' }, 'save_as'],
      [{ kinds: ['o_proj'], data: TRAIN, ids: [1, 2] }, 'data'],
      [{ kinds: ['o_proj'], data: '{"txt": "x"}' }, 'data'],
      [{ kinds: ['o_proj'], data: TRAIN, step: 3 }, 'step'],
      [{ kinds: ['o_proj'], ids: [1, 9999] }, 'ids'],
    ];
    for (const [body, param] of cases) {
      const r = await post('/v1/stethoscope/freeze', body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(r.body.error.param, param, JSON.stringify(r.body));
    }
  });
});
