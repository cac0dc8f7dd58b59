/**
 * The stethoscope and plugin responses that carry structured results (freeze plan, merge, destruction, levels,
 * extraction) match the schemas the OpenAPI document gives them, checked on real responses of a running server.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { fixtureDir, ORACLE_DIR, ROOT } from '../helpers/fixtures.ts';
import { responseChecker } from '../helpers/openapi.ts';

describe('documented response schemas', () => {
  let srv: RunningServer;
  let check: ReturnType<typeof responseChecker>;
  const data = `${ROOT}/.scratch-test-responses-${process.pid}`;
  before(async () => {
    srv = await startServer(parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--model-root', ORACLE_DIR, '--data-dir', data], {}), () => {});
    await srv.host.ready;
    check = responseChecker(await (await fetch(`${srv.url}/openapi.json`)).json());
  });
  after(async () => {
    await srv.close();
    rmSync(data, { recursive: true, force: true });
  });
  const call = async (method: 'get' | 'post', path: string, body?: unknown) => {
    const r = await fetch(`${srv.url}${path}`, { method, headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    const json = await r.json();
    check(method, path, r.status, json);
    return { status: r.status, json: json as Record<string, unknown> };
  };

  it('GET /v1/stethoscope/freeze-plan', async () => {
    const { status, json } = await call('get', '/v1/stethoscope/freeze-plan');
    assert.equal(status, 200);
    assert.equal((json.sets as unknown[]).length, 4);
  });

  it('POST /v1/stethoscope/merge: a probe (200) and a saved merge with a probe (201)', async () => {
    const probe = await call('post', '/v1/stethoscope/merge', { merge: [{ modules: ['M1'], from: 'B' }], prompts: [{ prompt: 'Hello', answer: '4' }], max_tokens: 4 });
    assert.equal(probe.status, 200);
    assert.equal((probe.json.results as unknown[]).length, 1);
    const saved = await call('post', '/v1/stethoscope/merge', { merge: [{ modules: ['o_proj'], from: 'B' }], save_as: 'typed-m1', prompts: [{ prompt: 'Hello' }], max_tokens: 4 });
    assert.equal(saved.status, 201);
    assert.ok(saved.json.plugin);
  });

  it('POST /v1/stethoscope/destruction: a probe', async () => {
    const { status } = await call('post', '/v1/stethoscope/destruction', {
      destroy: [{ method: 'zero', modules: ['o_proj'], layers: '1-2' }],
      prompts: [{ prompt: 'Hello' }, { prompt: 'Hi' }],
      max_tokens: 4,
    });
    assert.equal(status, 200);
  });

  it('POST /v1/stethoscope/levels and POST /v1/plugins/extract', async () => {
    assert.equal((await call('post', '/v1/stethoscope/levels', { items: [{ prompt: '2+2=', output: '4', answer: '4' }] })).status, 200);
    const extracted = await call('post', '/v1/plugins/extract', { id: 'typed-extract', base: 'A', tuned: 'B' });
    assert.equal(extracted.status, 201);
    assert.equal((extracted.json.audit as { exact: boolean }).exact, false);
  });

  it('the checker refuses a body that lacks what the schema requires', () => {
    assert.throws(() => check('post', '/v1/stethoscope/destruction', 200, { object: 'stethoscope.destruction', model: 'A' }), /does not match/);
    assert.throws(() => check('get', '/v1/stethoscope/freeze-plan', 200, { model: 'A', sets: 'x' }), /does not match/);
  });
});
