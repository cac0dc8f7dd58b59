/**
 * The OpenAI-compatible surface: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`.
 * Semantics follow OpenAI's API (and vLLM's extensions where OpenAI is silent): n choices per prompt,
 * SSE streaming with a final `data: [DONE]`, logprobs, echo, token-id prompts, usage, finish_reason.
 */
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { streamSSE, type SSEStreamingApi } from 'hono/streaming';
import type { GeneratedToken } from '../../engine/generate.ts';
import type { JobParams, ViewSpec } from '../../runtime/protocol.ts';
import type { PromptLogprob } from '../../engine/scheduler.ts';
import type { ModelTokenizer } from '../../engine/tokenizer.ts';
import { chatPrompt, PromptError, type ReasoningFormat } from '../../engine/prompt.ts';
import type { AuthConfig } from '../auth.ts';
import { requireKey } from '../auth.ts';
import { ApiError, badRequest, modelNotFound } from '../errors.ts';
import type { JobEvent, JobRunner, JobSpec } from '../jobs.ts';
import {
  ChatCompletionRequest,
  ChatCompletionResponse,
  CompletionRequest,
  CompletionResponse,
  errorResponses,
  ModelCard,
  ModelList,
} from '../schemas.ts';

export interface ModelEntry {
  id: string;
  created: number;
  parent: string | null;
}

export interface ServingContext {
  runner: JobRunner;
  /** Null until the engine has loaded. */
  tokenizer: () => ModelTokenizer | null;
  vocabSize: () => number;
  maxContext: () => number;
  /** `backbone` or `backbone:plugin-id`, with optional merge/destroy specs -> the view to run (404 model_not_found, 400 bad spec). */
  resolveView: (model: string, stethoscope?: { merge?: unknown; destroy?: unknown }) => ViewSpec;
  models: () => ModelEntry[];
  /** The server's default reasoning format (--reasoning-format). */
  reasoningFormat: ReasoningFormat;
}

const now = () => Math.floor(Date.now() / 1000);
const rid = (prefix: string) => `${prefix}-${crypto.randomUUID().replace(/-/g, '')}`;

interface Choice {
  index: number;
  promptIds: number[];
  tokens: GeneratedToken[];
  promptLogprobs: PromptLogprob[] | null;
  finish: 'stop' | 'length' | null;
}

function ready(ctx: ServingContext): ModelTokenizer {
  const t = ctx.tokenizer();
  if (!t) throw new ApiError(503, 'The model is still loading.', 'service_unavailable', 'model_loading', null, { 'Retry-After': '5' });
  return t;
}

function sharedParams(body: CompletionRequest | ChatCompletionRequest, choice: number): Omit<JobParams, 'maxTokens'> {
  return {
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    topK: body.top_k && body.top_k > 0 ? body.top_k : 0,
    // Choices of one request must differ, and the same request must repeat: seed + choice index.
    seed: body.seed != null ? (body.seed + choice) >>> 0 : undefined,
    stop: body.stop == null ? undefined : typeof body.stop === 'string' ? [body.stop] : body.stop,
    ignoreEos: body.ignore_eos ?? false,
    logitBias: body.logit_bias ? Object.fromEntries(Object.entries(body.logit_bias).map(([k, v]) => [Number(k), v])) : undefined,
  };
}

/** Checks request token ids (logit_bias keys) against the vocabulary. */
function checkBias(ctx: ServingContext, body: CompletionRequest | ChatCompletionRequest): void {
  const V = ctx.vocabSize();
  for (const k of Object.keys(body.logit_bias ?? {})) if (Number(k) >= V) throw badRequest(`logit_bias: token id ${k} is outside the vocabulary (0..${V - 1})`, 'logit_bias');
}

/** How a token is named in logprobs: its text, or "token_id:N" (vLLM's return_tokens_as_token_ids). */
function tokenName(tok: ModelTokenizer, id: number, asIds: boolean | null | undefined): string {
  return asIds ? `token_id:${id}` : tok.decode([id], false);
}

/** Runs every choice's job; calls `onEvent` as events arrive (in any order across choices). */
async function runAll(ctx: ServingContext, specs: JobSpec[], signal: AbortSignal, onEvent: (i: number, e: JobEvent) => Promise<void> | void): Promise<void> {
  const streams = specs.map((s) => ctx.runner.start(s, signal));
  await Promise.all(
    streams.map(async (st, i) => {
      for await (const e of st) await onEvent(i, e);
    }),
  );
}

function finishReason(reason: string): 'stop' | 'length' | null {
  return reason === 'stop' || reason === 'length' ? reason : null;
}

function usage(choices: Choice[], promptsCounted: number[][], reasoning = false) {
  const prompt = promptsCounted.reduce((a, p) => a + p.length, 0);
  const completion = choices.reduce((a, c) => a + c.tokens.length, 0);
  const out = { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
  if (!reasoning) return out;
  // Thinking tokens, forced "Wait"s included, the closing </think> not.
  const reasoningTokens = choices.reduce((a, c) => a + c.tokens.filter((t) => t.channel === 'reasoning' && !t.closesReasoning).length, 0);
  return { ...out, completion_tokens_details: { reasoning_tokens: reasoningTokens } };
}

function checkContext(ctx: ServingContext, promptLen: number, maxTokens: number, param: string): void {
  const limit = ctx.maxContext();
  if (promptLen + maxTokens > limit) {
    throw badRequest(
      `This model's maximum context length is ${limit} tokens. However, you requested ${promptLen + maxTokens} tokens (${promptLen} in the prompt, ${maxTokens} for the completion).`,
      param,
      'context_length_exceeded',
    );
  }
}

// ---------------------------------------------------------------- completions

function completionPrompts(ctx: ServingContext, tok: ModelTokenizer, prompt: CompletionRequest['prompt']): number[][] {
  let prompts: number[][];
  if (typeof prompt === 'string') prompts = [tok.encodePrompt(prompt)];
  else if (prompt.length && typeof prompt[0] === 'string') prompts = (prompt as string[]).map((p) => tok.encodePrompt(p));
  else if (prompt.length && typeof prompt[0] === 'number') prompts = [prompt as number[]];
  else prompts = prompt as number[][];
  const V = ctx.vocabSize();
  prompts.forEach((p) => {
    if (p.length === 0) throw badRequest('prompt: a prompt must have at least one token', 'prompt');
    const bad = p.find((id) => id >= V);
    if (bad !== undefined) throw badRequest(`prompt: token id ${bad} is outside the vocabulary (0..${V - 1})`, 'prompt');
  });
  return prompts;
}

/** The `logprobs` object of a completion choice (OpenAI's legacy format), echo included. */
function completionLogprobs(tok: ModelTokenizer, c: Choice, echo: boolean, k: number, asIds?: boolean | null) {
  const tokens: string[] = [];
  const tokenLogprobs: (number | null)[] = [];
  const top: (Record<string, number> | null)[] = [];
  const offsets: number[] = [];
  let offset = 0;
  const add = (id: number, lp: number | null, alts: { id: number; logprob: number }[] | null, text: string) => {
    tokens.push(tokenName(tok, id, asIds));
    tokenLogprobs.push(lp);
    top.push(alts === null ? null : Object.fromEntries(alts.slice(0, k).map((a) => [tokenName(tok, a.id, asIds), a.logprob])));
    offsets.push(offset);
    offset += text.length;
  };
  if (echo && c.promptLogprobs) for (const p of c.promptLogprobs) add(p.id, p.logprob, p.logprob === null ? null : p.top, tok.decode([p.id], false));
  for (const t of c.tokens) add(t.id, t.logprob ?? null, t.top ?? [], t.text);
  return { tokens, token_logprobs: tokenLogprobs, top_logprobs: top, text_offset: offsets };
}

const completionsRoute = createRoute({
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

async function completions(ctx: ServingContext, c: Context, body: CompletionRequest): Promise<Response> {
  const tok = ready(ctx);
  const view = ctx.resolveView(body.model, { merge: body.merge, destroy: body.destroy });
  const prompts = completionPrompts(ctx, tok, body.prompt);
  checkBias(ctx, body);
  const n = body.n ?? 1;
  const maxTokens = body.max_tokens ?? 16;
  const k = body.logprobs ?? undefined;
  const echo = body.echo ?? false;
  for (const p of prompts) checkContext(ctx, p.length, maxTokens, 'max_tokens');
  const choices: Choice[] = [];
  const specs: JobSpec[] = [];
  prompts.forEach((p, pi) => {
    for (let j = 0; j < n; j++) {
      const index = pi * n + j;
      choices.push({ index, promptIds: p, tokens: [], promptLogprobs: null, finish: null });
      specs.push({
        promptIds: p,
        view,
        params: { ...sharedParams(body, index), maxTokens, logprobs: k },
        promptLogprobs: echo && k !== undefined ? k : undefined,
      });
    }
  });
  ctx.runner.admit(specs.length);
  const id = rid('cmpl');
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
      stream.writeSSE({ data: JSON.stringify({ id, object: 'text_completion', created, model: body.model, choices: choicesPart, ...extra, ...(traced ? {} : ((traced = true), { sfn: view.trace })) }) });
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
        ch.tokens.push(e.token);
        const lp = k === undefined ? null : completionLogprobs(tok, { ...ch, tokens: [e.token], promptLogprobs: null }, false, k, body.return_tokens_as_token_ids);
        if (e.token.text || lp) await chunk([{ index: ch.index, text: e.token.text, logprobs: lp, finish_reason: null }]);
      } else {
        ch.finish = finishReason(e.finish.reason);
        if (ch.finish) await chunk([{ index: ch.index, text: '', logprobs: null, finish_reason: ch.finish }]);
      }
    });
    if (includeUsage) await chunk([], { usage: usage(choices, prompts) });
  });
}

// ---------------------------------------------------------------- chat completions

const chatRoute = createRoute({
  method: 'post',
  path: '/v1/chat/completions',
  summary: 'Create a chat completion (OpenAI-compatible), optionally in reasoning mode with budget forcing.',
  request: { body: { content: { 'application/json': { schema: ChatCompletionRequest } }, required: true } },
  responses: {
    200: {
      description: 'A chat completion, or with `stream: true` an SSE stream of `chat.completion.chunk` objects ending in `data: [DONE]`.',
      content: { 'application/json': { schema: ChatCompletionResponse }, 'text/event-stream': { schema: { type: 'string' } } },
    },
    ...errorResponses(400, 401, 404, 413, 429, 503),
  },
});

function chatLogprobEntry(tok: ModelTokenizer, t: GeneratedToken, asIds?: boolean | null) {
  const entry = (id: number, logprob: number) => {
    const text = tok.decode([id], false);
    return { token: tokenName(tok, id, asIds), logprob, bytes: [...Buffer.from(text, 'utf8')] };
  };
  return { ...entry(t.id, t.logprob ?? 0), top_logprobs: (t.top ?? []).map((a) => entry(a.id, a.logprob)) };
}

async function chat(ctx: ServingContext, c: Context, body: ChatCompletionRequest): Promise<Response> {
  const tok = ready(ctx);
  const view = ctx.resolveView(body.model, { merge: body.merge, destroy: body.destroy });
  const reasoningMode = body.mode === 'reasoning';
  if (body.top_logprobs != null && !body.logprobs) throw badRequest('top_logprobs needs "logprobs": true', 'top_logprobs');
  if (body.thinking_token_budget != null && body.max_thinking_tokens != null && body.thinking_token_budget !== body.max_thinking_tokens) {
    throw badRequest('thinking_token_budget is vLLM\'s name for max_thinking_tokens; give one of them', 'thinking_token_budget');
  }
  for (const f of ['min_thinking_tokens', 'max_thinking_tokens', 'thinking_token_budget', 'wait', 'reasoning_format'] as const) {
    if (body[f] != null && !reasoningMode) throw badRequest(`${f} needs "mode": "reasoning"`, f);
  }
  body = { ...body, max_thinking_tokens: body.max_thinking_tokens ?? body.thinking_token_budget };
  if (body.min_thinking_tokens != null && body.max_thinking_tokens != null && body.min_thinking_tokens > body.max_thinking_tokens) {
    throw badRequest('min_thinking_tokens must not exceed max_thinking_tokens', 'min_thinking_tokens');
  }
  checkBias(ctx, body);
  if (!tok.hasChatTemplate) throw badRequest('This model has no chat template; use /v1/completions.', 'messages', 'no_chat_template');
  const messages = body.messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: m.content === null ? '' : typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
  }));
  let promptIds: number[];
  let reasoning: JobParams['reasoning'];
  try {
    const budget = { minThinkingTokens: body.min_thinking_tokens, maxThinkingTokens: body.max_thinking_tokens, wait: body.wait, format: body.reasoning_format ?? ctx.reasoningFormat };
    ({ ids: promptIds, reasoning } = chatPrompt(tok, messages, reasoningMode ? budget : undefined));
  } catch (e) {
    if (e instanceof PromptError) throw badRequest(e.message, e.param);
    throw e;
  }
  const limit = ctx.maxContext();
  const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? limit - promptIds.length;
  checkContext(ctx, promptIds.length, maxTokens, body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens');
  const n = body.n ?? 1;
  const k = body.logprobs ? (body.top_logprobs ?? 0) : undefined;
  const choices: Choice[] = [];
  const specs: JobSpec[] = [];
  for (let i = 0; i < n; i++) {
    choices.push({ index: i, promptIds, tokens: [], promptLogprobs: null, finish: null });
    specs.push({ promptIds, view, params: { ...sharedParams(body, i), maxTokens, logprobs: k, reasoning } });
  }
  ctx.runner.admit(specs.length);
  const id = rid('chatcmpl');
  const created = now();
  const signal = c.req.raw.signal;
  // Each prompt counts once in usage, however many choices it has (as OpenAI counts it).
  const prompts = [promptIds];

  if (!body.stream) {
    await runAll(ctx, specs, signal, (i, e) => {
      if (e.type === 'token') choices[i].tokens.push(e.token);
      else if (e.type === 'done') choices[i].finish = finishReason(e.finish.reason);
    });
    return c.json({
      id,
      object: 'chat.completion' as const,
      created,
      model: body.model,
      choices: choices.map((ch) => {
        const content = ch.tokens.filter((t) => t.channel === 'content').map((t) => t.text).join('');
        const reasoningContent = reasoningMode ? ch.tokens.filter((t) => t.channel === 'reasoning').map((t) => t.text).join('') : undefined;
        return {
          index: ch.index,
          // `reasoning` is the field's newer name in vLLM; both carry the same text.
          message: { role: 'assistant' as const, content, ...(reasoningMode ? { reasoning_content: reasoningContent, reasoning: reasoningContent } : {}) },
          logprobs: k === undefined ? null : { content: ch.tokens.filter((t) => t.channel === 'content').map((t) => chatLogprobEntry(tok, t, body.return_tokens_as_token_ids)) },
          finish_reason: ch.finish,
        };
      }),
      usage: usage(choices, prompts, reasoningMode),
      sfn: view.trace,
    });
  }

  const includeUsage = body.stream_options?.include_usage ?? false;
  return sse(c, async (stream) => {
    let traced = false; // the view that ran rides on the first chunk
    const chunk = (choicesPart: unknown[], extra: Record<string, unknown> = {}) =>
      stream.writeSSE({ data: JSON.stringify({ id, object: 'chat.completion.chunk', created, model: body.model, choices: choicesPart, ...extra, ...(traced ? {} : ((traced = true), { sfn: view.trace })) }) });
    for (const ch of choices) await chunk([{ index: ch.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
    await runAll(ctx, specs, signal, async (i, e) => {
      const ch = choices[i];
      if (e.type === 'token') {
        ch.tokens.push(e.token);
        const t = e.token;
        if (!t.text && k === undefined) return;
        const delta = t.channel === 'reasoning' ? { reasoning_content: t.text, reasoning: t.text } : { content: t.text };
        const lp = k !== undefined && t.channel === 'content' ? { content: [chatLogprobEntry(tok, t, body.return_tokens_as_token_ids)] } : null;
        await chunk([{ index: ch.index, delta, logprobs: lp, finish_reason: null }]);
      } else if (e.type === 'done') {
        ch.finish = finishReason(e.finish.reason);
        if (ch.finish) await chunk([{ index: ch.index, delta: {}, logprobs: null, finish_reason: ch.finish }]);
      }
    });
    if (includeUsage) await chunk([], { usage: usage(choices, prompts, reasoningMode) });
  });
}

/** An SSE response that ends with `data: [DONE]`, or with an error event if generation fails midway. */
function sse(c: Context, body: (s: SSEStreamingApi) => Promise<void>): Response {
  return streamSSE(c, async (stream) => {
    try {
      await body(stream);
      if (!stream.aborted) await stream.writeSSE({ data: '[DONE]' });
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(500, (e as Error).message, 'server_error');
      if (!stream.aborted) await stream.writeSSE({ data: JSON.stringify(err.body()) });
    }
  });
}

// ---------------------------------------------------------------- models

const modelsRoute = createRoute({
  method: 'get',
  path: '/v1/models',
  summary: 'List the backbone and every plugin (as `backbone:plugin-id`).',
  responses: { 200: { description: 'Models.', content: { 'application/json': { schema: ModelList } } }, ...errorResponses(401) },
});

const modelRoute = createRoute({
  method: 'get',
  path: '/v1/models/{id}',
  summary: 'One model card: the backbone or `backbone:plugin-id`.',
  request: { params: z.object({ id: z.string().openapi({ param: { name: 'id', in: 'path' } }) }) },
  responses: { 200: { description: 'The model.', content: { 'application/json': { schema: ModelCard } } }, ...errorResponses(401, 404) },
});

export function openaiRoutes(app: OpenAPIHono, ctx: ServingContext, auth: AuthConfig): void {
  app.use('/v1/completions', requireKey(auth, 'user'));
  app.use('/v1/chat/completions', requireKey(auth, 'user'));
  app.use('/v1/models', requireKey(auth, 'user'));
  app.openapi(completionsRoute, (c) => completions(ctx, c, c.req.valid('json')) as never);
  app.openapi(chatRoute, (c) => chat(ctx, c, c.req.valid('json')) as never);
  const card = (m: ModelEntry) => ({ id: m.id, object: 'model' as const, created: m.created, owned_by: 'sfn', root: m.parent ?? m.id, parent: m.parent, max_model_len: ctx.tokenizer() ? ctx.maxContext() : undefined });
  app.openapi(modelsRoute, (c) => c.json({ object: 'list' as const, data: ctx.models().map(card) }));
  app.use('/v1/models/*', requireKey(auth, 'user'));
  app.openapi(modelRoute, (c) => {
    const id = c.req.valid('param').id;
    const m = ctx.models().find((x) => x.id === id);
    if (!m) throw modelNotFound(id);
    return c.json(card(m), 200);
  });
}
