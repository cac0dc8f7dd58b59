/**
 * `POST /v1/chat/completions`: the chat template, reasoning mode (think / s1 with budget forcing), logprobs, streaming.
 */
import { createRoute } from '@hono/zod-openapi';
import type { Context, MiddlewareHandler } from 'hono';
import type { GeneratedToken } from '../../../engine/generate.ts';
import type { JobParams } from '../../../runtime/protocol.ts';
import type { ModelTokenizer } from '../../../engine/tokenizer.ts';
import { PromptError } from '../../../engine/prompt.ts';
import { ContextOverflow } from '../../../engine/tokenizer-thread.ts';
import { countJsonObjects } from '../../../util/json.ts';
import { badRequest } from '../../errors.ts';
import type { JobSpec } from '../../jobs.ts';
import { ChatCompletionRequest, ChatCompletionResponse, errorResponses } from '../../schemas.ts';
import { type ServingContext, type Choice, now, rid, ready, sharedParams, checkBias, tokenName, runAll, finishReason, usage, checkContext, checkTextSize, overflow, sse } from './shared.ts';

/** Bodies past this size are scanned before hono parses them. */
const LARGE_BODY = 256 * 1024;
/** Objects a chat may hold besides its messages and content parts (logit_bias, stream_options, template kwargs...). */
const OTHER_OBJECTS = 64;

/**
 * Refuses a large chat body that cannot fit the context before it is parsed: parsing and validating 100,000
 * messages holds the HTTP thread for ~200 ms, and every message or content part renders to a token at least, so
 * a body with more JSON objects than the context has tokens (plus a few for other fields) cannot fit.
 */
export function chatBodyBound(ctx: ServingContext): MiddlewareHandler {
  return async (c, next) => {
    if (c.req.method === 'POST' && Number(c.req.header('content-length') ?? 0) > LARGE_BODY && ctx.tokenizer()) {
      const limit = ctx.maxContext() + OTHER_OBJECTS;
      const objects = countJsonObjects(await c.req.text(), limit);
      if (objects > limit) {
        throw badRequest(`This model's maximum context length is ${ctx.maxContext()} tokens, and this chat has more messages and content parts than that.`, 'messages', 'context_length_exceeded');
      }
    }
    await next();
  };
}

export const chatRoute = createRoute({
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

export async function chat(ctx: ServingContext, c: Context, body: ChatCompletionRequest): Promise<Response> {
  const tok = ready(ctx);
  const view = ctx.resolveView(body.model, { merge: body.merge, destroy: body.destroy });
  const reasoningMode = body.mode === 'reasoning';
  if (body.top_logprobs != null && !body.logprobs) throw badRequest('top_logprobs needs "logprobs": true', 'top_logprobs');
  if (body.thinking_token_budget != null && body.max_thinking_tokens != null && body.thinking_token_budget !== body.max_thinking_tokens) {
    throw badRequest("thinking_token_budget is vLLM's name for max_thinking_tokens; give one of them", 'thinking_token_budget');
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
  // Bound the work before doing it (large inputs are templated and tokenized in a thread, but not for free): every
  // message renders to at least one token, and the template only adds text, so the messages' count and bytes bound
  // the prompt from below.
  if (body.messages.length > ctx.maxContext()) {
    throw badRequest(`This model's maximum context length is ${ctx.maxContext()} tokens, and ${body.messages.length} messages take more than that.`, 'messages', 'context_length_exceeded');
  }
  checkTextSize(
    ctx,
    tok,
    body.messages.reduce((a, m) => a + (m.content === null ? 0 : typeof m.content === 'string' ? Buffer.byteLength(m.content) : m.content.reduce((b, p) => b + Buffer.byteLength(p.text), 0)), 0),
    'messages',
  );
  const messages = body.messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: m.content === null ? '' : typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
  }));
  let promptIds: number[];
  let reasoning: JobParams['reasoning'];
  const budget = { minThinkingTokens: body.min_thinking_tokens, maxThinkingTokens: body.max_thinking_tokens, wait: body.wait, format: body.reasoning_format ?? ctx.reasoningFormat };
  if (body.continue_final_message && body.add_generation_prompt) throw badRequest('add_generation_prompt and continue_final_message cannot both be true', 'continue_final_message');
  if (body.continue_final_message && reasoningMode) throw badRequest('continue_final_message continues an answer; it does not open thinking', 'continue_final_message');
  const reserved = Object.keys(body.chat_template_kwargs ?? {}).find((k) => ['messages', 'add_generation_prompt', 'bos_token', 'eos_token'].includes(k));
  if (reserved) throw badRequest(`chat_template_kwargs.${reserved}: set by the request itself, not by template variables`, `chat_template_kwargs.${reserved}`);
  const template = { addGenerationPrompt: body.add_generation_prompt ?? true, continueFinalMessage: body.continue_final_message ?? false, kwargs: body.chat_template_kwargs ?? undefined };
  try {
    ({ ids: promptIds, reasoning } = await ctx.prompts.chatPrompt(messages, reasoningMode ? budget : undefined, template, ctx.maxContext()));
  } catch (e) {
    if (e instanceof PromptError) throw badRequest(e.message, e.param);
    if (e instanceof ContextOverflow) throw overflow(ctx, e, 'messages');
    throw e;
  }
  const limit = ctx.maxContext();
  const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? limit - promptIds.length;
  checkContext(ctx, promptIds.length, maxTokens, body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens');
  const n = body.n ?? 1;
  const k = body.logprobs ? (body.top_logprobs ?? 0) : undefined;
  const choices: Choice[] = [];
  const specs: JobSpec[] = [];
  const id = rid('chatcmpl');
  for (let i = 0; i < n; i++) {
    choices.push({ index: i, promptIds, tokens: [], promptLogprobs: null, finish: null });
    // n choices prefill the prompt once.
    specs.push({ promptIds, view, params: { ...sharedParams(body, i), maxTokens, logprobs: k, reasoning }, promptGroup: n > 1 ? { key: id, first: i === 0 } : undefined });
  }
  ctx.runner.admit(specs.length);
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
        const content = ch.tokens
          .filter((t) => t.channel === 'content')
          .map((t) => t.text)
          .join('');
        const reasoningContent = reasoningMode
          ? ch.tokens
              .filter((t) => t.channel === 'reasoning')
              .map((t) => t.text)
              .join('')
          : undefined;
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
      stream.writeSSE({
        data: JSON.stringify({ id, object: 'chat.completion.chunk', created, model: body.model, choices: choicesPart, ...extra, ...(traced ? {} : ((traced = true), { sfn: view.trace })) }),
      });
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
