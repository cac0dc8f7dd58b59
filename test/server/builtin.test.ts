/**
 * The built-in model (stories260K, shipped in models/) served with no checkpoint configured, prompts encoded as
 * transformers encodes them (BOS on Llama tokenizers), and strict request validation.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MEMO_DIR } from '../../src/engine/checkpoint-memo.ts';
import { ModelTokenizer } from '../../src/engine/tokenizer.ts';
import { BUILTIN_MODEL_DIR } from '../../src/cli/common.ts';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

/** transformers 4.44's greedy continuation of tokenizer("Once upon a time") (ids 1,403,407,261,378) on stories260K. */
const TRANSFORMERS_CONTINUATION = ', there was a little girl named Lily. She loved to play outside in the park. One day,';

describe('prompt encoding as transformers does it', () => {
  it('adds BOS where tokenizer_config says add_bos_token (Llama), and nothing on Qwen tokenizers', () => {
    const llama = ModelTokenizer.fromDir(BUILTIN_MODEL_DIR);
    assert.deepEqual(llama.encodePrompt('Once upon a time'), [1, 403, 407, 261, 378]);
    assert.deepEqual(llama.encode('Once upon a time'), [403, 407, 261, 378], 'chat-template text gets no extra specials');
    const qwen = ModelTokenizer.fromDir(fixtureDir('A'));
    assert.deepEqual(qwen.encodePrompt('Hello, world!'), qwen.encode('Hello, world!'));
  });
});

describe('the built-in model', () => {
  let srv: RunningServer;
  const log: string[] = [];
  const saved = process.env.SFN_MODEL;
  const post = async (path: string, body: unknown) => {
    const r = await fetch(srv.url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, body: (await r.json()) as Record<string, any> };
  };

  before(async () => {
    delete process.env.SFN_MODEL;
    srv = await startServer(parseServerConfig(['--port', '0'], {}), (s) => log.push(s));
    await srv.host.ready;
  });
  after(async () => {
    await srv.close();
    if (saved !== undefined) process.env.SFN_MODEL = saved;
  });

  it('is served as stories260K when no checkpoint is configured, and says so', async () => {
    assert.equal(srv.modelName, 'stories260K');
    assert.match(log.join('\n'), /no model configured .* built-in model stories260K/);
    const models = (await (await fetch(`${srv.url}/v1/models`)).json()) as { data: { id: string }[] };
    assert.deepEqual(
      models.data.map((m) => m.id),
      ['stories260K'],
    );
  });

  it('continues "Once upon a time" as transformers does (BOS included)', async () => {
    const { status, body } = await post('/v1/completions', { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 30, temperature: 0 });
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.usage.prompt_tokens, 5, 'the prompt is <s> + 4 tokens');
    assert.ok(body.choices[0].text.startsWith(TRANSFORMERS_CONTINUATION), JSON.stringify(body.choices[0].text));
  });

  it('refuses reasoning mode with a 400 that names reasoning_format: it has neither think tokens nor ChatML', async () => {
    const { status, body } = await post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: 'Hi' }], mode: 'reasoning', max_tokens: 4 });
    assert.equal(status, 400);
    assert.equal(body.error.param, 'reasoning_format');
    assert.match(body.error.message, /neither/);
  });

  it('names unknown fields, at the top level and inside merge/destroy items and stethoscope bodies', async () => {
    const base = { model: 'stories260K', prompt: 'Once', max_tokens: 2 };
    const cases: [string, Record<string, unknown>, string][] = [
      ['/v1/completions', { ...base, destory: [{ method: 'zero', modules: ['o_proj'], layers: '0' }] }, 'destory'],
      ['/v1/completions', { ...base, destroy: [{ method: 'zero', modules: ['o_proj'], layer: '0' }] }, 'destroy.0.layer'],
      ['/v1/completions', { ...base, merge: [{ modules: ['o_proj'], layer: '0', from: 'x' }] }, 'merge.0.layer'],
      ['/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: 'x' }], mode: 'reasoning', max_thinking_token: 5 }, 'max_thinking_token'],
      ['/v1/completions', { ...base, stream_options: { include_usage: true, extra: 1 } }, 'stream_options.extra'],
      ['/v1/stethoscope/destruction', { destroy: [{ method: 'zero', modules: ['o_proj'], layers: '0' }], prompts: [{ prompt: 'x', answr: '1' }] }, 'prompts.0.answr'],
      ['/v1/stethoscope/destruction', { destroy: [{ method: 'zero', modules: ['o_proj'], layers: '0' }], prompts: [{ prompt: 'x' }], thresholds: { maxNLL: 3 } }, 'thresholds.maxNLL'],
      ['/v1/stethoscope/eval', { items: [{ id: 1, prompt: 'x', answer: '1' }], max_token: 3 }, 'max_token'],
    ];
    for (const [path, body, param] of cases) {
      const r = await post(path, body);
      assert.equal(r.status, 400, `${path} ${JSON.stringify(body)}`);
      assert.equal(r.body.error.param, param);
      assert.equal(r.body.error.code, 'unknown_field');
      assert.match(r.body.error.message, new RegExp(`^${param.replace(/\./g, '\\.')}: unknown field`));
    }
  });

  it('completion logprobs on emoji and CJK: tokens join back into the text, offsets follow them, top_logprobs hold the chosen token', async () => {
    type Lp = { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[]; text_offset: number[] };
    const check = (text: string, lp: Lp, k: number) => {
      assert.equal(lp.tokens.join(''), text);
      let at = 0;
      lp.tokens.forEach((t, i) => {
        assert.equal(lp.text_offset[i], at, `offset of token ${i}`);
        at += t.length;
        const top = lp.top_logprobs[i];
        if (top) {
          assert.ok(t in top, `token ${i} (${JSON.stringify(t)}) is among its top_logprobs`);
          assert.ok(Object.keys(top).length <= k + 1);
        }
      });
    };
    const prompt = 'Lily saw a 🙂 cat named 猫 and';
    const { body } = await post('/v1/completions', { model: 'stories260K', prompt, max_tokens: 12, temperature: 0, logprobs: 2, echo: true });
    const choice = body.choices[0] as { text: string; logprobs: Lp };
    assert.ok(choice.text.includes('🙂') && choice.text.includes('猫'));
    check(choice.text, choice.logprobs, 2);
    // Streamed: each chunk's offsets continue from the text before it.
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', prompt: '🙂🙂 猫', max_tokens: 10, temperature: 0, logprobs: 1, stream: true }),
    });
    const all: Lp = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    let text = '';
    for (const line of (await r.text()).split('\n')) {
      if (!line.startsWith('data: {')) continue;
      const ch = JSON.parse(line.slice(6)).choices[0];
      if (!ch) continue;
      text += ch.text;
      if (ch.logprobs) for (const key of ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset'] as const) (all[key] as unknown[]).push(...ch.logprobs[key]);
    }
    check(text, all, 1);
  });

  it('refuses text that cannot fit the context before tokenizing it', async () => {
    const big = 'x '.repeat(512 * 9);
    for (const [path, body, param] of [
      ['/v1/completions', { model: 'stories260K', prompt: big, max_tokens: 1 }, 'prompt'],
      ['/v1/completions', { model: 'stories260K', prompt: ['ok', big], max_tokens: 1 }, 'prompt.1'],
      ['/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: big }], max_tokens: 1 }, 'messages'],
    ] as const) {
      const r = await post(path, body);
      assert.equal(r.status, 400);
      assert.equal(r.body.error.code, 'context_length_exceeded');
      assert.equal(r.body.error.param, param);
      assert.match(r.body.error.message, /bytes of text/);
    }
    // Just under the bound, the prompt is tokenized and judged on its tokens.
    const r = await post('/v1/completions', { model: 'stories260K', prompt: 'x '.repeat(600), max_tokens: 1 });
    assert.equal(r.body.error.code, 'context_length_exceeded');
    assert.match(r.body.error.message, /tokens in the prompt|in the prompt/);
  });

  it('refuses OpenAI features it does not implement, and accepts bookkeeping fields', async () => {
    for (const [field, value] of [
      ['tools', [{ type: 'function', function: { name: 'f' } }]],
      ['tool_choice', 'auto'],
      ['response_format', { type: 'json_object' }],
      ['functions', []],
    ] as const) {
      const r = await post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: 'x' }], max_tokens: 2, [field]: value });
      assert.equal(r.status, 400, field);
      assert.equal(r.body.error.param, field);
      assert.match(r.body.error.message, /not supported/);
    }
    const ok = await post('/v1/chat/completions', {
      model: 'stories260K',
      messages: [{ role: 'user', content: 'x' }],
      max_tokens: 2,
      user: 'u1',
      metadata: { run: 'a' },
      store: false,
      service_tier: 'auto',
      tools: null,
    });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
  });

  it('counts a prompt once in usage whatever n is, serves one model card with max_model_len, and refuses top_logprobs alone', async () => {
    const chat = (n: number) => post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 3, n, seed: 1 });
    const promptTotal = async () => Number(/^vllm:prompt_tokens_total\{model_name="stories260K"\} (\d+)/m.exec(await (await fetch(`${srv.url}/metrics`)).text())?.[1] ?? 0);
    const before = await promptTotal();
    const [one, three] = [await chat(1), await chat(3)];
    assert.equal(three.body.choices.length, 3);
    assert.equal(three.body.usage.prompt_tokens, one.body.usage.prompt_tokens);
    assert.equal((await promptTotal()) - before, 2 * one.body.usage.prompt_tokens, "the counter counts each request's prompt once");
    const completions = await post('/v1/completions', { model: 'stories260K', prompt: ['Once upon', 'One day'], max_tokens: 2, n: 2, seed: 1 });
    assert.equal(completions.body.choices.length, 4);
    assert.equal((await promptTotal()) - before, 2 * one.body.usage.prompt_tokens + completions.body.usage.prompt_tokens);
    assert.equal(three.body.usage.completion_tokens, 9);
    const card = (await (await fetch(`${srv.url}/v1/models/stories260K`)).json()) as { id: string; max_model_len: number };
    assert.deepEqual([card.id, card.max_model_len], ['stories260K', 512]);
    const missing = await fetch(`${srv.url}/v1/models/nope`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'model_not_found');
    const r = await post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: 'x' }], max_tokens: 2, top_logprobs: 2 });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.param, 'top_logprobs');
  });

  it('says which view ran: the backbone, or the overlays with their defaults filled in', async () => {
    const plain = await post('/v1/completions', { model: 'stories260K', prompt: 'Once', max_tokens: 2, temperature: 0 });
    assert.equal(plain.body.sfn.view, srv.host.fingerprint);
    assert.deepEqual(plain.body.sfn.overlays, []);
    const destroyed = await post('/v1/completions', { model: 'stories260K', prompt: 'Once', max_tokens: 2, temperature: 0, destroy: [{ method: 'reinit', modules: ['o_proj'], layers: '1-2' }] });
    assert.notEqual(destroyed.body.sfn.view, srv.host.fingerprint);
    assert.deepEqual(destroyed.body.sfn.overlays, [{ type: 'destroy', spec: [{ method: 'reinit', modules: ['o_proj'], layers: '1-2', seed: 0 }] }]);
    const stream = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', messages: [{ role: 'user', content: 'x' }], max_tokens: 2, stream: true, destroy: [{ method: 'zero', modules: ['o_proj'], layers: '0' }] }),
    });
    const first = JSON.parse(
      (await stream.text())
        .split('\n')
        .find((l) => l.startsWith('data: '))!
        .slice(6),
    );
    assert.equal(first.sfn.overlays[0].type, 'destroy');
    assert.notEqual(first.sfn.view, srv.host.fingerprint);
    assert.notEqual(first.sfn.view, destroyed.body.sfn.view, 'another destruction, another view');
  });
});

describe('conventions other servers keep', () => {
  let srv: RunningServer;
  const KEY = 'user-key-12345678';
  before(async () => {
    srv = await startServer(parseServerConfig(['--model', BUILTIN_MODEL_DIR, '--port', '0', '--api-key', KEY, '--cors-origin', 'https://app.example.com'], {}), () => {});
    await srv.host.ready;
  });
  after(() => srv.close());
  const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };

  it('answers a CORS preflight from an allowed origin without a key, and names the origin on responses', async () => {
    const pre = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: { origin: 'https://app.example.com', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), 'https://app.example.com');
    assert.match(pre.headers.get('access-control-allow-headers') ?? '', /authorization/i);
    const r = await fetch(`${srv.url}/v1/models`, { headers: { ...auth, origin: 'https://app.example.com' } });
    assert.equal(r.headers.get('access-control-allow-origin'), 'https://app.example.com');
    const other = await fetch(`${srv.url}/v1/models`, { headers: { ...auth, origin: 'https://evil.example.com' } });
    assert.equal(other.headers.get('access-control-allow-origin'), null);
  });

  it('says how to authenticate on a 401, and 405 with Allow for a wrong method', async () => {
    const r = await fetch(`${srv.url}/v1/models`);
    assert.equal(r.status, 401);
    assert.equal(r.headers.get('www-authenticate'), 'Bearer');
    const wrong = await fetch(`${srv.url}/v1/completions`, { headers: auth });
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.get('allow'), 'POST');
    assert.equal(((await wrong.json()) as { error: { code: string } }).error.code, 'method_not_allowed');
    assert.equal((await fetch(`${srv.url}/v1/models/stories260K`, { method: 'DELETE', headers: auth })).status, 405);
    assert.equal((await fetch(`${srv.url}/v1/nothing-here`, { headers: auth })).status, 404);
  });

  it('tokenizes as generation encodes (BOS included), detokenizes, and reports its version', async () => {
    const t = await fetch(`${srv.url}/tokenize`, { method: 'POST', headers: auth, body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time' }) });
    assert.deepEqual(await t.json(), { count: 5, max_model_len: 512, tokens: [1, 403, 407, 261, 378] });
    const raw = (await (
      await fetch(`${srv.url}/tokenize`, { method: 'POST', headers: auth, body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', add_special_tokens: false }) })
    ).json()) as { tokens: number[] };
    assert.deepEqual(raw.tokens, [403, 407, 261, 378]);
    const d = (await (await fetch(`${srv.url}/detokenize`, { method: 'POST', headers: auth, body: JSON.stringify({ model: 'stories260K', tokens: [403, 407, 261, 378] }) })).json()) as {
      prompt: string;
    };
    assert.equal(d.prompt.trim(), 'Once upon a time');
    assert.equal((await fetch(`${srv.url}/tokenize`, { method: 'POST', headers: auth, body: JSON.stringify({ model: 'nope', prompt: 'x' }) })).status, 404);
    assert.deepEqual(await (await fetch(`${srv.url}/version`)).json(), { version: '0.1.0' });
  });
});

describe('the session cache across server starts', () => {
  it('the first start writes the optimised session, the next maps it, and both give transformers’ continuation', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sfn-serve-cache-'));
    try {
      const starts: { log: string; text: string }[] = [];
      for (let i = 0; i < 2; i++) {
        const lines: string[] = [];
        const srv = await startServer(parseServerConfig(['--port', '0', '--model', BUILTIN_MODEL_DIR, '--session-cache', dir], {}), (s) => lines.push(s));
        try {
          await srv.host.ready;
          const r = await fetch(`${srv.url}/v1/completions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model: srv.modelName, prompt: 'Once upon a time', max_tokens: 30, temperature: 0 }),
          });
          starts.push({ log: lines.join('\n'), text: ((await r.json()) as { choices: { text: string }[] }).choices[0].text });
        } finally {
          await srv.close();
        }
      }
      assert.match(starts[0].log, /optimised session built and written to the session cache/);
      assert.match(starts[1].log, /optimised session mapped from the session cache/);
      for (const s of starts) assert.equal(s.text, TRANSFORMERS_CONTINUATION);
      // One session entry, and the memo of the checkpoint that spared the second start its read.
      assert.equal(readdirSync(dir).filter((n) => !n.startsWith('.') && n !== MEMO_DIR).length, 1);
      assert.equal(readdirSync(join(dir, MEMO_DIR)).length, 1);
      // Off: neither read nor written.
      const lines: string[] = [];
      const srv = await startServer(parseServerConfig(['--port', '0', '--model', BUILTIN_MODEL_DIR, '--session-cache', 'off'], {}), (s) => lines.push(s));
      await srv.host.ready;
      await srv.close();
      assert.match(lines.join('\n'), /optimised session built \(not cached\)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
