/**
 * `POST /v1/completions`: prompts as text (encoded as transformers does, BOS included), strings, ids or lists of ids; n choices, echo, logprobs in OpenAI's legacy format, streaming.
 */
import { createRoute } from '@hono/zod-openapi';
import { Detokenizer } from '../../../engine/generate.ts';
import type { Context } from 'hono';
import type { ModelTokenizer } from '../../../engine/tokenizer.ts';
import { ContextOverflow } from '../../../engine/tokenizer-thread.ts';
import { badRequest } from '../../errors.ts';
import type { JobSpec } from '../../jobs.ts';
import { CompletionRequest, CompletionResponse, errorResponses } from '../../schemas.ts';
import { type ServingContext, type Choice, now, rid, ready, sharedParams, checkBias, tokenName, runAll, finishReason, usage, checkContext, checkTextSize, overflow, sse } from './shared.ts';

async function completionPrompts(ctx: ServingContext, prompt: CompletionRequest['prompt']): Promise<number[][]> {
  let prompts: number[][];
  const texts = typeof prompt === 'string' ? [prompt] : prompt.length && typeof prompt[0] === 'string' ? (prompt as string[]) : null;
  if (texts) {
    try {
      prompts = await ctx.prompts.encodeTexts(texts, true, ctx.maxContext());
    } catch (e) {
      if (e instanceof ContextOverflow) throw overflow(ctx, e, typeof prompt === 'string' ? 'prompt' : `prompt.${e.index}`);
      throw e;
    }
  } else if (prompt.length && typeof prompt[0] === 'number') prompts = [prompt as number[]];
  else prompts = prompt as number[][];
  const V = ctx.vocabSize();
  prompts.forEach((p) => {
    if (p.length === 0) throw badRequest('prompt: a prompt must have at least one token', 'prompt');
    const bad = p.find((id) => id >= V);
    if (bad !== undefined) throw badRequest(`prompt: token id ${bad} is outside the vocabulary (0..${V - 1})`, 'prompt');
  });
  return prompts;
}

/**
 * The `logprobs` object of a completion choice (OpenAI's legacy format), echo included. Each token is the text it
 * added, so the tokens join back into the choice's text (a character split across tokens goes to the token that
 * completes it) and `text_offset` is where each starts in it, from `start` for a streamed chunk. `top_logprobs`
 * always holds the chosen token, with up to `k` others (k + 1 entries at most, as OpenAI returns them).
 */
function completionLogprobs(tok: ModelTokenizer, c: Choice, echo: boolean, k: number, asIds?: boolean | null, start = 0) {
  const tokens: string[] = [];
  const tokenLogprobs: (number | null)[] = [];
  const top: (Record<string, number> | null)[] = [];
  const offsets: number[] = [];
  let offset = start;
  const add = (id: number, lp: number | null, alts: { id: number; logprob: number }[] | null, text: string) => {
    const name = asIds ? `token_id:${id}` : text;
    tokens.push(name);
    tokenLogprobs.push(lp);
    if (alts === null) top.push(null);
    else {
      const best = alts.slice(0, k);
      const entries = best.map((a) => [a.id === id ? name : tokenName(tok, a.id, asIds), a.logprob] as const);
      if (lp !== null && !best.some((a) => a.id === id)) entries.push([name, lp]);
      top.push(Object.fromEntries(entries));
    }
    offsets.push(offset);
    offset += text.length;
  };
  if (echo && c.promptLogprobs) {
    const d = new Detokenizer(tok, false);
    const pieces = c.promptLogprobs.map((p) => d.push(p.id));
    // A character the prompt ends inside is held back: it belongs to the last token of the echoed text.
    const rest = tok.decode(c.promptIds, false).slice(pieces.join('').length);
    if (pieces.length) pieces[pieces.length - 1] += rest;
    c.promptLogprobs.forEach((p, i) => add(p.id, p.logprob, p.logprob === null ? null : p.top, pieces[i]));
  }
  for (const t of c.tokens) add(t.id, t.logprob ?? null, t.top ?? [], t.text);
  return { tokens, token_logprobs: tokenLogprobs, top_logprobs: top, text_offset: offsets };
}

export const completionsRoute = createRoute({
  method: 'post',
  path: '/v1/completions',
  summary: 'Create a completion (OpenAI-compatible).',
  request: { body: { content: { 'application/json': { schema: CompletionRequest } }, required: true } },
  responses: {
    200: {
      description: 'A completion, or with `stream: true` an SSE stream of `text_completion` chunks ending in `data: [DONE]`.',
      content: { 'application/json': { schema: CompletionResponse }, 'text/event-stream': { schema: { type: 'string' } } },
    },
    ...errorResponses(400, 401, 404, 413, 429, 503),
  },
});

export async function completions(ctx: ServingContext, c: Context, body: CompletionRequest): Promise<Response> {
  const tok = ready(ctx);
  const view = ctx.resolveView(body.model, { merge: body.merge, destroy: body.destroy });
  if (typeof body.prompt === 'string') checkTextSize(ctx, tok, Buffer.byteLength(body.prompt), 'prompt');
  else if (typeof body.prompt[0] === 'string') (body.prompt as string[]).forEach((p, i) => checkTextSize(ctx, tok, Buffer.byteLength(p), `prompt.${i}`));
  const prompts = await completionPrompts(ctx, body.prompt);
  checkBias(ctx, body);
  const n = body.n ?? 1;
  const maxTokens = body.max_tokens ?? 16;
  const k = body.logprobs ?? undefined;
  const echo = body.echo ?? false;
  for (const p of prompts) checkContext(ctx, p.length, maxTokens, 'max_tokens');
  const choices: Choice[] = [];
  const specs: JobSpec[] = [];
  const id = rid('cmpl');
  prompts.forEach((p, pi) => {
    for (let j = 0; j < n; j++) {
      const index = pi * n + j;
      choices.push({ index, promptIds: p, tokens: [], promptLogprobs: null, finish: null });
      specs.push({
        promptIds: p,
        view,
        params: { ...sharedParams(body, index), maxTokens, logprobs: k },
        promptLogprobs: echo && k !== undefined ? k : undefined,
        // n choices of one prompt prefill it once.
        promptGroup: n > 1 ? { key: `${id}:${pi}`, first: j === 0 } : undefined,
      });
    }
  });
  ctx.runner.admit(specs.length);
  const created = now();
  const signal = c.req.raw.signal;
  const echoText = (ch: Choice) => (echo ? tok.decode(ch.promptIds, false) : '');

  if (!body.stream) {
    await runAll(ctx, specs, signal, (i, e) => {
      if (e.type === 'token') choices[i].tokens.push(e.token);
      else if (e.type === 'prompt_logprobs') choices[i].promptLogprobs = e.logprobs;
      else choices[i].finish = finishReason(e.finish.reason);
    });
    return c.json({
      id,
      object: 'text_completion' as const,
      created,
      model: body.model,
      choices: choices.map((ch) => ({
        index: ch.index,
        text: echoText(ch) + ch.tokens.map((t) => t.text).join(''),
        logprobs: k === undefined ? null : completionLogprobs(tok, ch, echo, k, body.return_tokens_as_token_ids),
        finish_reason: ch.finish,
      })),
      usage: usage(choices, prompts),
      sfn: view.trace,
    });
  }

  const includeUsage = body.stream_options?.include_usage ?? false;
  return sse(c, async (stream) => {
    let traced = false; // the view that ran rides on the first chunk
    const chunk = (choicesPart: unknown[], extra: Record<string, unknown> = {}) =>
      stream.writeSSE({
        data: JSON.stringify({ id, object: 'text_completion', created, model: body.model, choices: choicesPart, ...extra, ...(traced ? {} : ((traced = true), { sfn: view.trace })) }),
      });
    const echoed = new Set<number>();
    await runAll(ctx, specs, signal, async (i, e) => {
      const ch = choices[i];
      if (echo && !echoed.has(i) && (e.type !== 'prompt_logprobs' || k === undefined)) {
        // With logprobs the echo chunk waits for the prompt's logprobs, which arrive before any token.
        echoed.add(i);
        await chunk([{ index: ch.index, text: echoText(ch), logprobs: null, finish_reason: null }]);
      }
      if (e.type === 'prompt_logprobs') {
        ch.promptLogprobs = e.logprobs;
        if (echo && !echoed.has(i)) {
          echoed.add(i);
          const lp = completionLogprobs(tok, { ...ch, tokens: [] }, true, k!, body.return_tokens_as_token_ids);
          await chunk([{ index: ch.index, text: echoText(ch), logprobs: lp, finish_reason: null }]);
        }
      } else if (e.type === 'token') {
        const start = (echo ? echoText(ch).length : 0) + ch.tokens.reduce((a, t) => a + t.text.length, 0);
        ch.tokens.push(e.token);
        const lp = k === undefined ? null : completionLogprobs(tok, { ...ch, tokens: [e.token], promptLogprobs: null }, false, k, body.return_tokens_as_token_ids, start);
        if (e.token.text || lp) await chunk([{ index: ch.index, text: e.token.text, logprobs: lp, finish_reason: null }]);
      } else {
        ch.finish = finishReason(e.finish.reason);
        if (ch.finish) await chunk([{ index: ch.index, text: '', logprobs: null, finish_reason: ch.finish }]);
      }
    });
    if (includeUsage) await chunk([], { usage: usage(choices, prompts) });
  });
}
