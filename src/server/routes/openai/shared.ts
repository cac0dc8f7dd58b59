/**
 * What the OpenAI routes share: the serving context, choices and usage, sampling parameters, context checks,
 * logprob token names, and SSE responses that end with `data: [DONE]`.
 */
import type { Context } from 'hono';
import { streamSSE, type SSEStreamingApi } from 'hono/streaming';
import type { GeneratedToken } from '../../../engine/generate.ts';
import type { JobParams, ViewSpec } from '../../../runtime/protocol.ts';
import type { PromptLogprob } from '../../../engine/scheduler.ts';
import type { ModelTokenizer } from '../../../engine/tokenizer.ts';
import type { ContextOverflow, PromptEncoder } from '../../../engine/tokenizer-thread.ts';
import type { ReasoningFormat } from '../../../engine/prompt.ts';
import { ApiError, badRequest } from '../../errors.ts';
import type { JobEvent, JobRunner, JobSpec } from '../../jobs.ts';
import type { ChatCompletionRequest, CompletionRequest } from '../../schemas.ts';

export interface ModelEntry {
  id: string;
  created: number;
  parent: string | null;
}

export interface ServingContext {
  runner: JobRunner;
  /** Null until the engine has loaded. */
  tokenizer: () => ModelTokenizer | null;
  /** Prompts from text and chats, large ones encoded off the HTTP thread. */
  prompts: PromptEncoder;
  vocabSize: () => number;
  maxContext: () => number;
  /** `backbone` or `backbone:plugin-id`, with optional merge/destroy specs -> the view to run (404 model_not_found, 400 bad spec). */
  resolveView: (model: string, stethoscope?: { merge?: unknown; destroy?: unknown }) => ViewSpec;
  models: () => ModelEntry[];
  /** The server's default reasoning format (--reasoning-format). */
  reasoningFormat: ReasoningFormat;
}

export const now = () => Math.floor(Date.now() / 1000);
export const rid = (prefix: string) => `${prefix}-${crypto.randomUUID().replace(/-/g, '')}`;

export interface Choice {
  index: number;
  promptIds: number[];
  tokens: GeneratedToken[];
  promptLogprobs: PromptLogprob[] | null;
  finish: 'stop' | 'length' | null;
}

export function ready(ctx: ServingContext): ModelTokenizer {
  const t = ctx.tokenizer();
  if (!t) throw new ApiError(503, 'The model is still loading.', 'service_unavailable', 'model_loading', null, { 'Retry-After': '5' });
  return t;
}

export function sharedParams(body: CompletionRequest | ChatCompletionRequest, choice: number): Omit<JobParams, 'maxTokens'> {
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
export function checkBias(ctx: ServingContext, body: CompletionRequest | ChatCompletionRequest): void {
  const V = ctx.vocabSize();
  for (const k of Object.keys(body.logit_bias ?? {})) if (Number(k) >= V) throw badRequest(`logit_bias: token id ${k} is outside the vocabulary (0..${V - 1})`, 'logit_bias');
}

/** How a token is named in logprobs: its text, or "token_id:N" (vLLM's return_tokens_as_token_ids). */
export function tokenName(tok: ModelTokenizer, id: number, asIds: boolean | null | undefined): string {
  return asIds ? `token_id:${id}` : tok.decode([id], false);
}

/** Runs every choice's job; calls `onEvent` as events arrive (in any order across choices). */
export async function runAll(ctx: ServingContext, specs: JobSpec[], signal: AbortSignal, onEvent: (i: number, e: JobEvent) => Promise<void> | void): Promise<void> {
  // A request's sequences live and die together: the client going away, or any one failing, cancels them all.
  const ac = new AbortController();
  const all = AbortSignal.any([signal, ac.signal]);
  const streams = specs.map((s) => ctx.runner.start(s, all));
  try {
    await Promise.all(
      streams.map(async (st, i) => {
        for await (const e of st) await onEvent(i, e);
      }),
    );
  } catch (e) {
    ac.abort();
    throw e;
  }
}

export function finishReason(reason: string): 'stop' | 'length' | null {
  return reason === 'stop' || reason === 'length' ? reason : null;
}

export function usage(choices: Choice[], promptsCounted: number[][], reasoning = false) {
  const prompt = promptsCounted.reduce((a, p) => a + p.length, 0);
  const completion = choices.reduce((a, c) => a + c.tokens.length, 0);
  const out = { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
  if (!reasoning) return out;
  // Thinking tokens, forced "Wait"s included, the closing </think> not.
  const reasoningTokens = choices.reduce((a, c) => a + c.tokens.filter((t) => t.channel === 'reasoning' && !t.closesReasoning).length, 0);
  return { ...out, completion_tokens_details: { reasoning_tokens: reasoningTokens } };
}

/**
 * Refuses text that cannot fit the context before tokenizing it: tokenizing megabytes holds the HTTP thread
 * for seconds, and a text of more than (context x the longest token's bytes) bytes has more tokens than fit.
 */
export function checkTextSize(ctx: ServingContext, tok: ModelTokenizer, bytes: number, param: string): void {
  const limit = ctx.maxContext();
  if (bytes > limit * tok.maxTokenBytes) {
    throw badRequest(`This model's maximum context length is ${limit} tokens, and ${bytes} bytes of text are more than that many tokens can hold.`, param, 'context_length_exceeded');
  }
}

/** The 400 for a text the count in pieces found too long for the context. */
export function overflow(ctx: ServingContext, e: ContextOverflow, param: string): ApiError {
  return badRequest(`This model's maximum context length is ${ctx.maxContext()} tokens, and this text has more than ${e.atLeast} tokens.`, param, 'context_length_exceeded');
}

export function checkContext(ctx: ServingContext, promptLen: number, maxTokens: number, param: string): void {
  const limit = ctx.maxContext();
  if (promptLen + maxTokens > limit) {
    throw badRequest(
      `This model's maximum context length is ${limit} tokens. However, you requested ${promptLen + maxTokens} tokens (${promptLen} in the prompt, ${maxTokens} for the completion).`,
      param,
      'context_length_exceeded',
    );
  }
}

/** An SSE response that ends with `data: [DONE]`, after an error event if generation fails midway. */
export function sse(c: Context, body: (s: SSEStreamingApi) => Promise<void>): Response {
  return streamSSE(c, async (stream) => {
    try {
      await body(stream);
      if (!stream.aborted) await stream.writeSSE({ data: '[DONE]' });
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(500, (e as Error).message, 'server_error');
      // The error event, then [DONE] as after any stream: clients that wait for it do not hang.
      if (!stream.aborted) await stream.writeSSE({ data: JSON.stringify(err.body()) });
      if (!stream.aborted) await stream.writeSSE({ data: '[DONE]' });
    }
  });
}
