/** The engine's thread dying: requests waiting on it fail with a 503, /metrics keeps answering, and a new thread serves. */
import assert from 'node:assert/strict';
import type { Worker } from 'node:worker_threads';
import { after, before, describe, it } from 'node:test';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers/fixtures.ts';

describe('engine restart', () => {
  let srv: RunningServer;
  before(async () => {
    srv = await startServer(parseServerConfig(['--model', join(ROOT, 'models/stories260K'), '--port', '0'], {}), () => {});
    await srv.host.ready;
  });
  after(() => srv.close());

  it('restarts a dead engine thread; the next request succeeds and /metrics answers throughout', async () => {
    const complete = () =>
      fetch(`${srv.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }),
      });
    const before = (await (await complete()).json()) as { choices: { text: string }[] };
    // Kill the thread between runs (terminating one inside an onnxruntime run aborts the process).
    const worker = (srv.host as unknown as { worker: Worker }).worker;
    await worker.terminate();
    assert.equal(srv.host.restarts, 1);
    assert.notEqual(srv.host.state, 'failed');
    const during = await fetch(`${srv.url}/metrics`);
    assert.equal(during.status, 200);
    const refused = await complete();
    if (refused.status !== 200) {
      assert.equal(refused.status, 503, 'while the engine reloads, a request is told to retry');
      assert.ok(refused.headers.get('retry-after'));
    }
    const t0 = Date.now();
    while ((await fetch(`${srv.url}/ready`)).status !== 200) {
      assert.ok(Date.now() - t0 < 60_000, 'the engine came back');
      await new Promise((r) => setTimeout(r, 100));
    }
    const after = (await (await complete()).json()) as { choices: { text: string }[] };
    assert.equal(after.choices[0].text, before.choices[0].text, 'the restarted engine gives the same greedy text');
    assert.equal((await fetch(`${srv.url}/metrics`)).status, 200);
  });

  it('rejects a stats request when its thread dies instead of leaving it waiting', async () => {
    const worker = (srv.host as unknown as { worker: Worker }).worker;
    const waiting = srv.host.stats();
    await worker.terminate();
    // Either the thread answered first, or the request failed: it never hangs.
    await Promise.race([
      waiting.then(
        () => 'answered',
        (e: Error) => e.name,
      ),
      new Promise((_, rej) => setTimeout(() => rej(new Error('hung')), 10_000)),
    ]).then((r) => assert.ok(r === 'answered' || r === 'EngineLostError', String(r)));
    const t0 = Date.now();
    while (srv.host.state !== 'ready') {
      assert.ok(Date.now() - t0 < 60_000);
      await new Promise((r) => setTimeout(r, 100));
    }
  });
});

describe('engine stop', () => {
  it('a server closed while its model loads stops its thread for good: no restart, no thread left behind', async () => {
    const srv = await startServer(parseServerConfig(['--model', join(ROOT, 'models/stories260K'), '--port', '0'], {}), () => {});
    const worker = (srv.host as unknown as { worker: Worker }).worker;
    const exited = new Promise<number>((r) => worker.once('exit', r));
    await srv.close();
    assert.equal(await exited, 0, 'the thread ended by itself, not terminated');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(srv.host.state, 'closed');
    assert.equal(srv.host.restarts, 0);
    assert.equal((srv.host as unknown as { worker: Worker }).worker, worker, 'no new thread');
  });

  it('a model that fails to load ends its thread: the server reads failed and closes at once', { timeout: 60_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sfn-noweights-'));
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) cpSync(join(ROOT, 'models/stories260K', f), join(dir, f));
    const srv = await startServer(parseServerConfig(['--model', dir, '--port', '0', '--data-dir', join(dir, 'data')], {}), () => {});
    const worker = (srv.host as unknown as { worker: Worker }).worker;
    const exited = new Promise<number>((r) => worker.once('exit', r));
    await assert.rejects(srv.host.ready);
    assert.equal(srv.host.state, 'failed');
    await exited;
    const t0 = Date.now();
    await srv.close();
    assert.ok(Date.now() - t0 < 10_000, `closing took ${Date.now() - t0} ms (the grace is 30 s)`);
  });
});
