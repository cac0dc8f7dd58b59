/**
 * The server through its real interface: started on fixture A, driven over HTTP by the official `openai`
 * client and by raw requests for every error case.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { parseServerConfig } from '../../src/server/config.ts';
import { buildOpenApiDocument, OPENAPI_PATH } from '../../src/server/openapi.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { cachedModel } from '../../src/model/make-model.ts';
import { fixtureDir, oracle, ROOT } from '../helpers/fixtures.ts';
import { logSoftmax } from '../helpers/reference.ts';

const USER = 'user-key-123456';
const ADMIN = 'admin-key-123456';
const quiet = () => {};

function config(extra: string[] = []) {
  return parseServerConfig(
    [
      '--model',
      fixtureDir('A'),
      '--port',
      '0',
      '--api-key',
      USER,
      '--admin-key',
      ADMIN,
      '--max-batch',
      '4',
      '--max-running',
      '8',
      '--max-waiting',
      '4',
      '--max-context',
      '256',
      '--max-body-bytes',
      '65536',
      ...extra,
    ],
    {},
  );
}

describe('OpenAI-compatible server on fixture A', () => {
  let srv: RunningServer;
  let client: OpenAI;
  const o = oracle('A');
  const post = (path: string, body: unknown, key: string | null = USER, raw = false) =>
    fetch(srv.url + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
      body: raw ? (body as string) : JSON.stringify(body),
    });

  before(async () => {
    srv = await startServer(config(), quiet);
    await srv.host.ready;
    client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: USER, maxRetries: 0 });
  });
  after(() => srv.close());

  it('lists the backbone', async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      ['A'],
    );
  });

  it('greedy completion equals `sfn logits --greedy` for the same ids', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ['bin/sfn.js', 'logits', '--model', fixtureDir('A'), '--ids', o.ids.join(','), '--greedy', '8'], { cwd: ROOT, maxBuffer: 64 << 20 });
    const cli = JSON.parse(stdout).greedy as number[];
    const r = await client.completions.create({ model: 'A', prompt: o.ids, max_tokens: 8, temperature: 0, logprobs: 0, ignore_eos: true, return_tokens_as_token_ids: true } as never);
    const ids = r.choices[0].logprobs!.tokens!.map((t) => Number(t.replace('token_id:', '')));
    assert.deepEqual(ids, cli);
    assert.deepEqual(ids, o.greedy);
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.deepEqual(r.usage, { prompt_tokens: 16, completion_tokens: 8, total_tokens: 24 });
  });

  it('scores the prompt with echo + logprobs + max_tokens 0, as the oracle logits say', async () => {
    const r = await client.completions.create({ model: 'A', prompt: o.ids, max_tokens: 0, echo: true, logprobs: 1 });
    const lp = r.choices[0].logprobs!;
    assert.equal(lp.token_logprobs![0], null);
    for (let t = 1; t < o.ids.length; t++) {
      const want = logSoftmax(o.logits[t - 1])[o.ids[t]];
      assert.ok(Math.abs(lp.token_logprobs![t]! - want) < 1e-4, `token ${t}`);
    }
    assert.equal(r.usage!.completion_tokens, 0);
  });

  it('streams completions with the same text as without streaming, then usage and [DONE]', async () => {
    const req = { model: 'A', prompt: 'Hello, world', max_tokens: 10, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming;
    const full = await client.completions.create(req);
    const stream = await client.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let finish: string | null = null;
    let usage: unknown = null;
    for await (const ch of stream) {
      if (ch.choices[0]) {
        text += ch.choices[0].text;
        finish = ch.choices[0].finish_reason ?? finish;
      }
      if (ch.usage) usage = ch.usage;
    }
    assert.equal(text, full.choices[0].text);
    assert.equal(finish, 'length');
    assert.deepEqual(usage, full.usage);
    const raw = await (await post('/v1/completions', { ...req, stream: true })).text();
    assert.ok(raw.trimEnd().endsWith('data: [DONE]'));
  });

  it('chats, with and without streaming, and returns logprobs with alternatives', async () => {
    const req = { model: 'A', messages: [{ role: 'user' as const, content: 'Hi there' }], max_completion_tokens: 6, temperature: 0 };
    const full = await client.chat.completions.create({ ...req, logprobs: true, top_logprobs: 3 });
    const msg = full.choices[0].message;
    assert.equal(msg.role, 'assistant');
    const lps = full.choices[0].logprobs!.content!;
    assert.ok(lps.length > 0);
    for (const e of lps) {
      assert.equal(e.top_logprobs.length, 3);
      assert.ok(Math.abs(e.logprob - e.top_logprobs[0].logprob) < 1e-9, 'greedy picks the most likely token');
    }
    const stream = await client.chat.completions.create({ ...req, stream: true });
    let content = '';
    let role = '';
    for await (const ch of stream) {
      content += ch.choices[0]?.delta.content ?? '';
      role ||= ch.choices[0]?.delta.role ?? '';
    }
    assert.equal(role, 'assistant');
    assert.equal(content, msg.content);
  });

  it('honours stop strings, n, and seeds', async () => {
    const base = { model: 'A', prompt: 'Hello', max_tokens: 12, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming;
    const text = (await client.completions.create(base)).choices[0].text;
    assert.ok(text.length > 4);
    const stop = text.slice(2, 4);
    const cut = await client.completions.create({ ...base, stop: [stop] });
    assert.equal(cut.choices[0].text, text.slice(0, text.indexOf(stop)));
    assert.equal(cut.choices[0].finish_reason, 'stop');
    const sampled = { ...base, temperature: 1, n: 2, seed: 42 };
    const a = await client.completions.create(sampled);
    const b = await client.completions.create(sampled);
    assert.deepEqual(
      a.choices.map((c) => c.index),
      [0, 1],
    );
    assert.deepEqual(
      a.choices.map((c) => c.text),
      b.choices.map((c) => c.text),
    );
    assert.notEqual(a.choices[0].text, a.choices[1].text);
  });

  it('reasoning mode: min_thinking_tokens appends "Wait" where thinking would have ended', async () => {
    // logit_bias makes the model try to close thinking (</think> = 280) at every step.
    const r = (await client.chat.completions.create({
      model: 'A',
      messages: [{ role: 'user', content: 'Think.' }],
      temperature: 0,
      max_completion_tokens: 24,
      mode: 'reasoning',
      min_thinking_tokens: 10,
      wait: 2,
      logit_bias: { 280: 100 },
    } as never)) as unknown as { choices: { message: { content: string; reasoning_content: string } }[]; usage: { completion_tokens_details: { reasoning_tokens: number } } };
    const m = r.choices[0].message;
    assert.ok(m.reasoning_content.startsWith('Wait'), JSON.stringify(m.reasoning_content));
    assert.equal(m.reasoning_content.split('Wait').length - 1, 2);
    assert.ok(r.usage.completion_tokens_details.reasoning_tokens >= 10);
    assert.equal(r.usage.completion_tokens_details.reasoning_tokens, 10, 'thinking ends at the first try after the minimum');
  });

  it('reasoning mode: thinking is never shorter than min_thinking_tokens, and max_thinking_tokens closes it', async () => {
    for (const min of [3, 7]) {
      const r = (await client.chat.completions.create({
        model: 'A',
        messages: [{ role: 'user', content: 'Think.' }],
        temperature: 0,
        max_completion_tokens: 30,
        mode: 'reasoning',
        min_thinking_tokens: min,
        wait: 0,
        logit_bias: { 280: 100 },
      } as never)) as unknown as { usage: { completion_tokens_details: { reasoning_tokens: number } } };
      assert.equal(r.usage.completion_tokens_details.reasoning_tokens, min);
    }
    const stream = await client.chat.completions.create({
      model: 'A',
      messages: [{ role: 'user', content: 'Think.' }],
      temperature: 0,
      max_completion_tokens: 12,
      stream: true,
      mode: 'reasoning',
      max_thinking_tokens: 5,
      logit_bias: { 280: -100, 276: -100, 278: -100 },
      ignore_eos: true,
    } as never);
    const order: string[] = [];
    let reasoning = '';
    for await (const ch of stream as unknown as AsyncIterable<{ choices: { delta: { content?: string; reasoning_content?: string } }[] }>) {
      const d = ch.choices[0]?.delta;
      if (d?.reasoning_content) (reasoning += d.reasoning_content), order.push('r');
      if (d?.content) order.push('c');
    }
    assert.ok(reasoning.length > 0);
    assert.ok(order.includes('c'), 'the answer follows the forced close');
    assert.ok(order.lastIndexOf('r') < order.indexOf('c'), 'no thinking after the close');
  });

  it('batches concurrent requests into shared decode steps with the same results', async () => {
    const prompts = ['Hello', 'world!', 'abc', 'The quick'];
    const req = (prompt: string | string[]) => client.completions.create({ model: 'A', prompt, max_tokens: 16, temperature: 0, ignore_eos: true } as never) as Promise<OpenAI.Completion>;
    const alone: string[] = [];
    for (const p of prompts) alone.push((await req(p)).choices[0].text);
    // One request with four prompts: its four sequences reach the scheduler together, whatever the timing.
    const before = (await srv.host.stats()).steps;
    const together = await req(prompts);
    const steps = (await srv.host.stats()).steps - before;
    assert.deepEqual(
      together.choices.map((c) => c.text),
      alone,
    );
    // Alone: 4 x (1 prefill + 15 decodes) = 64 runs. Together they share decode steps.
    assert.ok(steps < 40, `${steps} engine steps for 4 concurrent sequences`);
    // Separate concurrent requests give the same texts (they share steps when they overlap in time).
    assert.deepEqual(
      (await Promise.all(prompts.map(req))).map((r) => r.choices[0].text),
      alone,
    );
  });

  it('stops generating when a streaming client disconnects', async () => {
    const ac = new AbortController();
    const res = await fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      signal: ac.signal,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${USER}` },
      body: JSON.stringify({ model: 'A', prompt: 'Hello', max_tokens: 200, temperature: 0, ignore_eos: true, stream: true }),
    });
    const reader = res.body!.getReader();
    await reader.read();
    await reader.read();
    assert.equal(srv.host.inFlight, 1);
    ac.abort();
    const t0 = Date.now();
    while (srv.host.inFlight > 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10));
    assert.equal(srv.host.inFlight, 0);
    const stats = await srv.host.stats();
    assert.equal(stats.running, 0);
  });

  it('stops generating when a non-streaming client disconnects', async () => {
    const ac = new AbortController();
    const req = fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      signal: ac.signal,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${USER}` },
      body: JSON.stringify({ model: 'A', prompt: 'Hello', max_tokens: 240, temperature: 0, ignore_eos: true }),
    }).catch(() => 'aborted');
    const t0 = Date.now();
    while (srv.host.inFlight === 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 5));
    assert.equal(srv.host.inFlight, 1);
    ac.abort();
    assert.equal(await req, 'aborted');
    const t1 = Date.now();
    while (srv.host.inFlight > 0 && Date.now() - t1 < 5000) await new Promise((r) => setTimeout(r, 10));
    assert.equal(srv.host.inFlight, 0);
  });

  describe("errors in OpenAI's format", () => {
    async function expectError(res: Response, status: number, code: string | null, param?: string) {
      assert.equal(res.status, status);
      const body = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
      assert.equal(typeof body.error.message, 'string');
      assert.equal(typeof body.error.type, 'string');
      if (code !== null) assert.equal(body.error.code, code);
      if (param !== undefined) assert.equal(body.error.param, param);
      return body;
    }
    it('400 names the offending field by its path', async () => {
      await expectError(await post('/v1/chat/completions', { model: 'A', messages: [{ role: 'bogus', content: 'x' }] }), 400, null, 'messages.0.role');
      await expectError(await post('/v1/completions', { model: 'A', prompt: 'x', temperature: 3 }), 400, null, 'temperature');
      await expectError(await post('/v1/completions', { model: 'A' }), 400, null, 'prompt');
      await expectError(await post('/v1/completions', { model: 'A', prompt: [1, 999999] }), 400, null, 'prompt');
      await expectError(await post('/v1/completions', { model: 'A', prompt: 'x', logit_bias: { '99999': 1 } }), 400, null, 'logit_bias');
      await expectError(await post('/v1/chat/completions', { model: 'A', messages: [{ role: 'user', content: 'x' }], wait: 2 }), 400, null, 'wait');
    });
    it('400 for malformed JSON, 415 for a body that is not sent as JSON, each with a code and our own words', async () => {
      const bad = await expectError(await post('/v1/completions', '{"model":', USER, true), 400, 'invalid_json');
      assert.equal(bad.error.message, 'The request body is not valid JSON.');
      const form = await fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { authorization: `Bearer ${USER}`, 'content-type': 'application/x-www-form-urlencoded' }, body: 'model=A' });
      const body = await expectError(form, 415, 'unsupported_media_type');
      assert.match(body.error.message, /Content-Type: application\/json/);
    });
    it('400 context_length_exceeded', async () => {
      await expectError(await post('/v1/completions', { model: 'A', prompt: 'x', max_tokens: 10000 }), 400, 'context_length_exceeded', 'max_tokens');
      // More messages than the context has tokens: refused before the template renders them (on the HTTP thread).
      const messages = Array.from({ length: 300 }, () => ({ role: 'user', content: 'hi' }));
      const t0 = performance.now();
      await expectError(await post('/v1/chat/completions', { model: 'A', messages }), 400, 'context_length_exceeded', 'messages');
      assert.ok(performance.now() - t0 < 30_000);
    });
    it('401 without a key or with a wrong one', async () => {
      await expectError(await post('/v1/completions', { model: 'A', prompt: 'x' }, null), 401, 'invalid_api_key');
      await expectError(await post('/v1/completions', { model: 'A', prompt: 'x' }, 'wrong-key-123456'), 401, 'invalid_api_key');
    });
    it('404 for an unknown model or route', async () => {
      await expectError(await post('/v1/completions', { model: 'nope', prompt: 'x' }), 404, 'model_not_found', 'model');
      await expectError(await post('/v1/completions', { model: 'A:nope', prompt: 'x' }), 404, 'model_not_found', 'model');
      await expectError(await fetch(`${srv.url}/v1/nothing`), 404, 'not_found');
    });
    it('413 for a body over the limit', async () => {
      await expectError(await post('/v1/completions', { model: 'A', prompt: 'x'.repeat(100_000) }), 413, 'payload_too_large');
    });
    it('429 with Retry-After past the queue bound', async () => {
      const res = await post('/v1/completions', { model: 'A', prompt: 'x', n: 16 });
      assert.ok(Number(res.headers.get('retry-after')) >= 1);
      await expectError(res, 429, 'queue_full');
    });
  });

  it('exports vLLM-named metrics', async () => {
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    for (const name of [
      'vllm:num_requests_running',
      'vllm:num_requests_waiting',
      'vllm:time_to_first_token_seconds_count',
      'vllm:time_per_output_token_seconds_bucket',
      'vllm:e2e_request_latency_seconds_sum',
      'vllm:prompt_tokens_total',
      'vllm:generation_tokens_total',
      'vllm:lora_requests_info',
      'sfn_kv_cache_bytes',
    ]) {
      assert.ok(text.includes(name), name);
    }
    const ttft = /vllm:time_to_first_token_seconds_count\{model_name="A"\} (\d+)/.exec(text);
    assert.ok(ttft && Number(ttft[1]) > 0);
  });

  it("publishes every metric the Inference Extension picker and vLLM's dashboard query, with max_lora the plugin slots of a step", async () => {
    await client.completions.create({ model: 'A', prompt: 'Hello', max_tokens: 3, temperature: 0, ignore_eos: true } as never);
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    // The picker's defaults (queue, KV usage, LoRA info) and the panels of vLLM's Grafana dashboard.
    const wanted = [
      'vllm:num_requests_waiting',
      'vllm:kv_cache_usage_perc',
      'vllm:lora_requests_info',
      'vllm:num_requests_running',
      'vllm:inter_token_latency_seconds_bucket',
      'vllm:time_to_first_token_seconds_bucket',
      'vllm:e2e_request_latency_seconds_bucket',
      'vllm:request_prompt_tokens_bucket',
      'vllm:request_generation_tokens_bucket',
      'vllm:request_queue_time_seconds_bucket',
      'vllm:request_prefill_time_seconds_bucket',
      'vllm:request_decode_time_seconds_bucket',
      'vllm:request_max_num_generation_tokens_bucket',
      'vllm:prompt_tokens_total',
      'vllm:generation_tokens_total',
    ];
    for (const name of wanted) assert.match(text, new RegExp(`^${name}[{ ]`, 'm'), name);
    for (const name of ['vllm:request_queue_time_seconds_count', 'vllm:request_prefill_time_seconds_count', 'vllm:request_decode_time_seconds_count', 'vllm:request_generation_tokens_count']) {
      assert.ok(Number(new RegExp(`^${name}\\{model_name="A"\\} (\\d+)`, 'm').exec(text)?.[1]) > 0, `${name} observed`);
    }
    assert.match(text, /max_lora="4"/);
  });

  it('serves health, readiness and the OpenAPI document that is checked in', async () => {
    assert.equal((await fetch(`${srv.url}/health`)).status, 200);
    assert.equal((await fetch(`${srv.url}/ready`)).status, 200);
    const served = await (await fetch(`${srv.url}/openapi.json`)).json();
    const file = JSON.parse(readFileSync(OPENAPI_PATH, 'utf8'));
    assert.deepEqual(served, file, 'openapi/openapi.json is stale: run `npm run openapi`');
    assert.deepEqual(buildOpenApiDocument(), file);
  });
});

describe('server lifecycle', () => {
  it('answers 503 while the model loads and when it failed to load', async () => {
    const srv = await startServer(config(), quiet);
    try {
      assert.equal(srv.host.state, 'loading');
      const res = await fetch(`${srv.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${USER}` },
        body: JSON.stringify({ model: 'A', prompt: 'x' }),
      });
      assert.equal(res.status, 503);
      assert.ok(res.headers.get('retry-after'));
      assert.equal((await fetch(`${srv.url}/ready`)).status, 503);
      assert.equal((await fetch(`${srv.url}/health`)).status, 200);
      await srv.host.ready;
      assert.equal((await fetch(`${srv.url}/ready`)).status, 200);
    } finally {
      await srv.close();
    }
  });
});

describe("a request's sequences", () => {
  it('are all cancelled when one of them fails', async () => {
    const { runAll } = await import('../../src/server/routes/openai/shared.ts');
    const aborted: boolean[] = [false, false, false];
    // The runner's contract: an iterable of events per sequence, cancelled through the signal it is given.
    const runner = {
      start: (spec: { promptIds: number[] }, signal: AbortSignal) =>
        (async function* () {
          const i = spec.promptIds[0];
          yield { type: 'token', token: { id: i, text: 'x' } };
          if (i === 1) throw new Error('sequence 1 failed');
          await new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }));
          aborted[i] = true;
        })(),
    };
    const specs = [0, 1, 2].map((i) => ({ promptIds: [i], view: { overlays: [] }, params: { maxTokens: 4 } }));
    await assert.rejects(
      runAll({ runner } as never, specs as never, new AbortController().signal, () => {}),
      /sequence 1 failed/,
    );
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(aborted, [true, false, true]);
  });
});

/** A server of its own for a describe block: started before its tests, closed after them. */
function serverFor(args: string[]): () => RunningServer {
  let srv: RunningServer;
  before(async () => {
    srv = await startServer(parseServerConfig([...args, '--port', '0'], {}), () => {});
    await srv.host.ready;
  });
  after(() => srv.close());
  return () => srv;
}

describe('a served model name with a slash (Hugging Face style)', () => {
  const server = serverFor(['--model', fixtureDir('A'), '--served-model-name', 'Org/A-model']);

  it('is one model card, through the SDK (encoded) and as plain path segments', async () => {
    const client = new OpenAI({ baseURL: `${server().url}/v1`, apiKey: 'none', maxRetries: 0 });
    assert.equal((await client.models.retrieve('Org/A-model')).id, 'Org/A-model');
    const plain = await fetch(`${server().url}/v1/models/Org/A-model`);
    assert.equal(plain.status, 200);
    assert.equal(((await plain.json()) as { id: string }).id, 'Org/A-model');
    assert.equal((await fetch(`${server().url}/v1/models/Org/nope`)).status, 404);
    const r = await client.completions.create({ model: 'Org/A-model', prompt: 'Hello', max_tokens: 2 });
    assert.equal(r.model, 'Org/A-model');
  });
});

describe('large chat bodies (the default 4 MiB limit, context 4096)', () => {
  const server = serverFor(['--model', fixtureDir('A'), '--served-model-name', 'A']);
  const post = async (body: unknown) => {
    const r = await fetch(`${server().url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, error: ((await r.json()) as { error: { message: string; code: string; param: string } }).error };
  };

  it('refuses more messages than the context has tokens from a scan of the raw body, and parses a large body that may fit', async () => {
    const messages = Array.from({ length: 10_000 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: 'hi' }));
    const r = await post({ model: 'A', messages, max_tokens: 1 });
    assert.deepEqual([r.status, r.error.code, r.error.param], [400, 'context_length_exceeded', 'messages']);
    assert.match(r.error.message, /more messages and content parts than that/, 'refused by the scan, before parsing');
    // One long message: few objects, so it goes on to the parse and the checks after it.
    const long = await post({ model: 'A', messages: [{ role: 'user', content: 'x'.repeat(300_000) }], max_tokens: 1 });
    assert.equal(long.status, 400);
    assert.doesNotMatch(long.error.message, /content parts/);
  });
});

describe('long texts on a tokenizer with long tokens (Qwen: 256 bytes), context 4096', () => {
  const server = serverFor(['--model', cachedModel('tiny', 0).dir, '--served-model-name', 'q']);
  const post = async (path: string, body: unknown) => {
    const r = await fetch(`${server().url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, body: (await r.json()) as { error: { message: string; code: string; param: string }; usage: { prompt_tokens: number } } };
  };
  // 200 KB of prose: under the byte bound (4096 x 256 bytes = 1 MiB), about 45,000 tokens.
  const prose = 'The quick brown fox jumps over the lazy dog. '.repeat(4600);

  it('refuses a text the byte bound lets through but the context cannot hold, counted in pieces', async () => {
    const c = await post('/v1/completions', { model: 'q', prompt: prose, max_tokens: 1 });
    assert.deepEqual([c.status, c.body.error.code, c.body.error.param], [400, 'context_length_exceeded', 'prompt']);
    assert.match(c.body.error.message, /this text has more than \d+ tokens/);
    const chat = await post('/v1/chat/completions', { model: 'q', messages: [{ role: 'user', content: prose }], max_tokens: 1 });
    assert.deepEqual([chat.status, chat.body.error.param], [400, 'messages']);
    assert.match(chat.body.error.message, /more than \d+ tokens/);
  });

  it('tokenizes a large text off the HTTP thread: /health keeps answering meanwhile', async () => {
    // ~1 MB, ~230,000 tokens: /tokenize counts any length (as vLLM), which takes about a second.
    const big = prose.repeat(5);
    let done = false;
    const start = performance.now();
    const counted = post('/tokenize', { model: 'q', prompt: big }).finally(() => (done = true));
    let last = performance.now();
    let longestGap = 0;
    while (!done) {
      assert.equal((await fetch(`${server().url}/health`)).status, 200);
      longestGap = Math.max(longestGap, performance.now() - last);
      last = performance.now();
    }
    const total = performance.now() - start;
    const r = (await counted) as unknown as { status: number; body: { count: number } };
    assert.equal(r.status, 200);
    assert.ok(r.body.count > 100_000, `${r.body.count} tokens`);
    // A ratio within one run, not a time: on the HTTP thread the tokenizing would be one gap of nearly the whole.
    assert.ok(longestGap < total / 2, `the longest wait for /health was ${longestGap.toFixed(0)} of ${total.toFixed(0)} ms`);
  });

  it('detokenizes a long id list (in the tokenizer thread) to the text the ids came from', async () => {
    const text = prose.slice(0, 100_000);
    const { body } = (await post('/tokenize', { model: 'q', prompt: text, add_special_tokens: false })) as unknown as { body: { tokens: number[] } };
    assert.ok(body.tokens.length > 16_384, `${body.tokens.length} ids`);
    const r = (await post('/detokenize', { model: 'q', tokens: body.tokens })) as unknown as { status: number; body: { prompt: string } };
    assert.equal(r.status, 200);
    assert.equal(r.body.prompt, text);
  });

  it('serves a long text of few tokens (70 KB of spaces), tokenized whole as before', async () => {
    const r = await post('/v1/completions', { model: 'q', prompt: `${' '.repeat(70_000)}Hello`, max_tokens: 1 });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(r.body.usage.prompt_tokens < 1000, `${r.body.usage.prompt_tokens} prompt tokens`);
  });
});
