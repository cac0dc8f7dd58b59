/**
 * Reasoning formats: `think` (<think>...</think>) and s1's (`<|im_start|>think` ... `<|im_start|>answer`), chosen
 * per request or by `auto`, with budget forcing in both; over HTTP on a ChatML model without think tokens, and
 * as Sequence semantics on synthetic logits.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Sequence, type GeneratedToken } from '../../src/engine/generate.ts';
import { chatPrompt, PromptError, reasoningFormat } from '../../src/engine/prompt.ts';
import { ModelTokenizer } from '../../src/engine/tokenizer.ts';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

const IM_START = 277;
const IM_END = 278; // the EOS of these fixtures
const THINK_END = 280;

/** Fixture A's files with <think> / </think> removed from the tokenizer: a ChatML model that cannot think in tags. */
function chatmlWithoutThinkTokens(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sfn-nothink-'));
  for (const f of ['config.json', 'model.safetensors', 'generation_config.json']) copyFileSync(join(fixtureDir('A'), f), join(dir, f));
  // A's ChatML template, with Qwen3's switch for an empty thinking block (chat_template_kwargs.enable_thinking).
  const cfg = JSON.parse(readFileSync(join(fixtureDir('A'), 'tokenizer_config.json'), 'utf8'));
  cfg.chat_template = cfg.chat_template.replace(
    "{{ '<|im_start|>assistant\n' }}",
    "{{ '<|im_start|>assistant\n' }}{% if enable_thinking is defined and not enable_thinking %}{{ 'no thinking\n' }}{% endif %}",
  );
  if (!cfg.chat_template.includes('enable_thinking')) throw new Error('fixture template changed');
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
  const tok = JSON.parse(readFileSync(join(fixtureDir('A'), 'tokenizer.json'), 'utf8'));
  tok.added_tokens = tok.added_tokens.filter((t: { content: string }) => !t.content.includes('think'));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok));
  return dir;
}

type Chat = {
  choices: { message: { content: string; reasoning_content?: string; reasoning?: string }; finish_reason: string }[];
  usage: { completion_tokens: number; completion_tokens_details?: { reasoning_tokens: number } };
};

describe('reasoning formats over HTTP, on a ChatML model without think tokens', () => {
  let dir: string;
  let srv: RunningServer;
  let tok: ModelTokenizer;
  const chat = async (body: Record<string, unknown>) => {
    const r = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'nothink', messages: [{ role: 'user', content: 'Think.' }], temperature: 0, ...body }),
    });
    return { status: r.status, body: (await r.json()) as Chat & { error?: { param: string; message: string } } };
  };

  before(async () => {
    dir = chatmlWithoutThinkTokens();
    tok = ModelTokenizer.fromDir(dir);
    srv = await startServer(parseServerConfig(['--model', dir, '--served-model-name', 'nothink', '--port', '0', '--max-context', '256'], {}), () => {});
    await srv.host.ready;
  });
  after(async () => {
    await srv.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('auto picks s1 here, and think where both tags are single tokens', () => {
    assert.equal(tok.tokenId('</think>'), undefined);
    assert.equal(reasoningFormat(tok, 'auto'), 's1');
    assert.equal(reasoningFormat(ModelTokenizer.fromDir(fixtureDir('A')), 'auto'), 'think');
    assert.throws(
      () => reasoningFormat(tok, 'think'),
      (e: unknown) => e instanceof PromptError && e.param === 'reasoning_format',
    );
  });

  it('opens s1 thinking after the assistant header, and closes it with <|im_start|>answer', () => {
    const p = chatPrompt(tok, [{ role: 'user', content: 'Hi' }], { format: 'auto' });
    assert.match(tok.decode(p.ids, false), /<\|im_start\|>assistant\n<\|im_start\|>think\n$/);
    assert.equal(p.format, 's1');
    assert.equal(tok.decode(p.reasoning!.endIds, false), '<|im_start|>answer\n');
  });

  it('s1: below min_thinking_tokens an attempt to answer becomes "Wait" (at most `wait` times), then is suppressed', async () => {
    const wait = tok.encode('Wait').length;
    const { status, body } = await chat({ mode: 'reasoning', min_thinking_tokens: 6, wait: 2, logit_bias: { [IM_START]: 100 }, max_completion_tokens: 20 });
    assert.equal(status, 200, JSON.stringify(body));
    const m = body.choices[0].message;
    assert.equal(m.reasoning_content!.split('Wait').length - 1, 2, JSON.stringify(m.reasoning_content));
    assert.equal(m.reasoning, m.reasoning_content, "`reasoning` (vLLM's newer name) carries the same text");
    // Two Waits, then suppression until the minimum; thinking ends at the first try after it.
    assert.equal(body.usage.completion_tokens_details!.reasoning_tokens, Math.max(6, 2 * wait));
  });

  it('s1: max_thinking_tokens forces the answer delimiter, and the answer follows (streamed)', async () => {
    const r = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'nothink',
        messages: [{ role: 'user', content: 'Think.' }],
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
        mode: 'reasoning',
        max_thinking_tokens: 4,
        logit_bias: { [IM_START]: -100, [IM_END]: -100, 276: -100 },
        max_completion_tokens: 14,
      }),
    });
    const order: string[] = [];
    let reasoning = '';
    let alias = '';
    let usage: Chat['usage'] | null = null;
    for (const line of (await r.text()).split('\n')) {
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const ch = JSON.parse(line.slice(6));
      if (ch.usage) usage = ch.usage;
      const d = ch.choices[0]?.delta;
      if (d?.reasoning_content) (reasoning += d.reasoning_content), (alias += d.reasoning), order.push('r');
      if (d?.content) order.push('c');
    }
    assert.equal(usage!.completion_tokens_details!.reasoning_tokens, 4);
    assert.equal(usage!.completion_tokens, 14);
    assert.equal(alias, reasoning);
    assert.ok(order.includes('c'), 'the answer follows the forced delimiter');
    assert.ok(order.lastIndexOf('r') < order.indexOf('c'), 'no thinking after the delimiter');
  });

  it("takes vLLM's thinking_token_budget as max_thinking_tokens", async () => {
    const { body } = await chat({ mode: 'reasoning', thinking_token_budget: 3, logit_bias: { [IM_START]: -100, [IM_END]: -100, 276: -100 }, max_completion_tokens: 10 });
    assert.equal(body.usage.completion_tokens_details!.reasoning_tokens, 3);
  });

  it('an EOS inside thinking ends thinking, not the reply; it is no reasoning token', async () => {
    const delim = tok.encode('<|im_start|>answer\n').length;
    const { body } = await chat({ mode: 'reasoning', logit_bias: { [IM_END]: 100 }, max_completion_tokens: 20 });
    // EOS at once: the delimiter replaces it, the answer phase starts, and the answer's EOS ends the reply.
    assert.equal(body.usage.completion_tokens_details!.reasoning_tokens, 0);
    assert.equal(body.usage.completion_tokens, delim + 1);
    assert.equal(body.choices[0].finish_reason, 'stop');
  });

  it("honours vLLM's chat extensions: add_generation_prompt, continue_final_message, chat_template_kwargs", async () => {
    const user = '<|im_start|>user\nThink.<|im_end|>\n';
    const promptTokens = async (body: Record<string, unknown>) => (await chat({ max_completion_tokens: 1, ...body })).body.usage as unknown as { prompt_tokens: number };
    assert.equal((await promptTokens({})).prompt_tokens, tok.encode(user + '<|im_start|>assistant\n').length);
    assert.equal((await promptTokens({ add_generation_prompt: false })).prompt_tokens, tok.encode(user).length);
    assert.equal((await promptTokens({ chat_template_kwargs: { enable_thinking: false } })).prompt_tokens, tok.encode(user + '<|im_start|>assistant\nno thinking\n').length);
    const cont = await promptTokens({
      messages: [
        { role: 'user', content: 'Think.' },
        { role: 'assistant', content: 'The answer is' },
      ],
      continue_final_message: true,
      add_generation_prompt: false,
    });
    assert.equal(cont.prompt_tokens, tok.encode(user + '<|im_start|>assistant\nThe answer is').length, 'the final message stays open');
    const both = await chat({
      messages: [
        { role: 'user', content: 'x' },
        { role: 'assistant', content: 'y' },
      ],
      continue_final_message: true,
      add_generation_prompt: true,
      max_completion_tokens: 1,
    });
    assert.equal(both.status, 400);
    const clash = await chat({ chat_template_kwargs: { messages: [] }, max_completion_tokens: 1 });
    assert.equal(clash.body.error!.param, 'chat_template_kwargs.messages');
  });

  it('reasoning_format "think" is a 400 naming the field on this model; fields without reasoning mode are too', async () => {
    let r = await chat({ mode: 'reasoning', reasoning_format: 'think', max_completion_tokens: 4 });
    assert.equal(r.status, 400);
    assert.equal(r.body.error!.param, 'reasoning_format');
    assert.match(r.body.error!.message, /<think>/);
    r = await chat({ reasoning_format: 's1', max_completion_tokens: 4 });
    assert.equal(r.status, 400);
    assert.equal(r.body.error!.param, 'reasoning_format');
  });
});

describe('budget forcing on synthetic logits', () => {
  const tok = ModelTokenizer.fromDir(fixtureDir('A'));
  const V = 384;
  const pick = (id: number) => {
    const l = new Float32Array(V).fill(-10);
    l[id] = 10;
    return l;
  };
  const run = (seq: Sequence, ids: number[]) => ids.map((id) => (seq.finish ? null : seq.accept(pick(id)))).filter((t): t is GeneratedToken => t !== null);

  it('think: EOS after the minimum is replaced by </think>, and the answer is generated', () => {
    const { reasoning } = chatPrompt(tok, [{ role: 'user', content: 'x' }], { format: 'think', minThinkingTokens: 2 });
    const seq = new Sequence({ maxTokens: 10, temperature: 0, reasoning }, tok);
    const out = run(seq, [72, 73, IM_END, 74, 75, IM_END]);
    assert.deepEqual(
      out.map((t) => t.id),
      [72, 73, THINK_END, 74, 75, IM_END],
    );
    assert.deepEqual(
      out.map((t) => t.channel),
      ['reasoning', 'reasoning', 'reasoning', 'content', 'content', 'content'],
    );
    assert.ok(out[2].closesReasoning && out[2].forced);
    assert.equal(seq.thinkingTokens, 2);
    assert.equal(seq.finish?.reason, 'stop');
  });

  it('s1: a sampled <|im_start|> is completed to the answer header; the header is neither text', () => {
    const { reasoning } = chatPrompt(tok, [{ role: 'user', content: 'x' }], { format: 's1' });
    const header = reasoning!.endIds;
    assert.equal(header[0], IM_START);
    const seq = new Sequence({ maxTokens: 20, temperature: 0, reasoning }, tok);
    const out = run(seq, [72, IM_START, ...Array(header.length - 1).fill(0), 74, IM_END]);
    assert.deepEqual(
      out.map((t) => t.id),
      [72, ...header, 74, IM_END],
    );
    assert.ok(out.slice(1, 1 + header.length).every((t) => t.closesReasoning && t.text === ''));
    assert.equal(seq.reasoningText, 'H');
    assert.equal(seq.text, 'J');
  });
});
