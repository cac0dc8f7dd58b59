/**
 * Request and response schemas of the OpenAI-compatible API. The same zod objects validate requests and
 * generate the OpenAPI document (@hono/zod-openapi), so the two cannot drift apart.
 */
import { z } from '@hono/zod-openapi';
import { REASONING_FORMATS } from '../engine/prompt.ts';
import { DestroySpec, MergeSpec, Seed } from '../views/spec.ts';

const Stop = z
  .union([z.string(), z.array(z.string()).max(16)])
  .nullish()
  .openapi({ description: 'Up to 16 strings that end generation; they are not returned.' });

const common = {
  model: z.string().min(1).openapi({ description: "The backbone's name, or `backbone:plugin-id`.", example: 'stories260K' }),
  temperature: z.number().min(0).max(2).nullish().openapi({ description: 'Sampling temperature; 0 is greedy. Default 1.' }),
  top_p: z.number().gt(0).max(1).nullish().openapi({ description: 'Nucleus sampling mass. Default 1.' }),
  top_k: z.number().int().min(-1).nullish().openapi({ description: 'vLLM extension: keep the k most likely tokens (-1 or 0: off).' }),
  n: z.number().int().min(1).max(16).nullish().openapi({ description: 'Choices per prompt. Default 1.' }),
  stream: z.boolean().nullish(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional(), continuous_usage_stats: z.boolean().optional() }).nullish(),
  stop: Stop,
  seed: Seed.nullish().openapi({ description: 'Sampling seed; the same seed gives the same output.' }),
  ignore_eos: z.boolean().nullish().openapi({ description: 'vLLM extension: keep generating past EOS.' }),
  presence_penalty: z.literal(0).nullish().openapi({ description: 'Only 0 is supported.' }),
  frequency_penalty: z.literal(0).nullish().openapi({ description: 'Only 0 is supported.' }),
  user: z.string().nullish(),
  // OpenAI bookkeeping fields: accepted and ignored (they change nothing about the output).
  metadata: z.record(z.string(), z.string()).nullish().openapi({ description: 'Accepted and ignored.' }),
  store: z.boolean().nullish().openapi({ description: 'Accepted and ignored (nothing is stored).' }),
  service_tier: z.string().nullish().openapi({ description: 'Accepted and ignored.' }),
  prompt_cache_key: z.string().nullish().openapi({ description: 'Accepted and ignored.' }),
  safety_identifier: z.string().nullish().openapi({ description: 'Accepted and ignored.' }),
  // OpenAI features sfn does not implement: a 400 that says so, rather than an answer that silently lacks them.
  ...Object.fromEntries(
    ['tools', 'tool_choice', 'functions', 'function_call', 'parallel_tool_calls', 'response_format', 'audio', 'modalities', 'prediction', 'web_search_options', 'reasoning_effort', 'verbosity'].map(
      (f) => [
        f,
        z
          .null({ error: `"${f}" is not supported by sfn` })
          .optional()
          .openapi({ description: 'Not supported: any value but null is a 400.' }),
      ],
    ),
  ),
  logit_bias: z
    .record(z.string().regex(/^\d+$/, 'keys must be token ids'), z.number().min(-100).max(100))
    .nullish()
    .openapi({ description: 'Added to the logits of these token ids before sampling (-100 bans, 100 forces).' }),
  return_tokens_as_token_ids: z.boolean().nullish().openapi({ description: 'vLLM extension: logprob tokens as "token_id:N" instead of text.' }),
  merge: MergeSpec.nullish().openapi({
    description:
      'sfn stethoscope: run on a merge of the backbone. A list of {modules: kinds or presets M1 (o_proj) / M2 (q,k,v) / M3 (MLP), layers: "0-27" | "all", from: plugin id or checkpoint directory under the model roots, alpha: (1-alpha)*A + alpha*B, default 1}.',
  }),
  destroy: DestroySpec.nullish().openapi({
    description:
      'sfn stethoscope: run on a destroyed view. A list of {method: zero | reinit (N(0, 0.02), seeded) | remove (skip whole layers), modules: kinds or presets (not for remove), layers: "5-30", seed}.',
  }),
};

export const CompletionRequest = z
  .strictObject({
    ...common,
    prompt: z
      .union([z.string(), z.array(z.string()).min(1), z.array(z.number().int().min(0)).min(1), z.array(z.array(z.number().int().min(0)).min(1)).min(1)])
      .openapi({ description: 'A string, a list of strings, a list of token ids, or a list of lists of token ids.' }),
    max_tokens: z.number().int().min(0).nullish().openapi({ description: 'Default 16. 0 with echo and logprobs scores the prompt.' }),
    logprobs: z.number().int().min(0).max(20).nullish().openapi({ description: 'Return log-probabilities of the chosen tokens and this many alternatives.' }),
    echo: z.boolean().nullish().openapi({ description: 'Return the prompt before the completion (with its logprobs when asked).' }),
    suffix: z.null().optional().openapi({ description: 'Not supported.' }),
    best_of: z.number().int().min(1).max(1).nullish().openapi({ description: 'Only 1 is supported.' }),
  })
  .openapi('CompletionRequest');
export type CompletionRequest = z.infer<typeof CompletionRequest>;

const ContentPart = z.object({ type: z.literal('text'), text: z.string() });
const Message = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.union([z.string(), z.array(ContentPart)]).nullable(),
  name: z.string().optional(),
  reasoning_content: z.string().nullish(),
});

export const ChatCompletionRequest = z
  .strictObject({
    ...common,
    messages: z.array(Message).min(1),
    max_tokens: z.number().int().min(1).nullish().openapi({ description: 'Deprecated alias of max_completion_tokens.' }),
    max_completion_tokens: z.number().int().min(1).nullish().openapi({ description: 'Tokens to generate, thinking included. Default: up to the context limit.' }),
    logprobs: z.boolean().nullish(),
    top_logprobs: z.number().int().min(0).max(20).nullish(),
    mode: z.enum(['chat', 'reasoning']).nullish().openapi({
      description: 'sfn extension. `reasoning` opens a thinking block and applies budget forcing (s1): the thinking comes back as `reasoning_content` (and `reasoning`). Default `chat`.',
    }),
    reasoning_format: z.enum(REASONING_FORMATS).nullish().openapi({
      description:
        "Reasoning mode: `think` (`<think>`...`</think>`), `s1` (`<|im_start|>think` ... `<|im_start|>answer`, for ChatML models without think tokens), or `auto` (think when both tags are single tokens, else s1 on a ChatML template). Default: the server's --reasoning-format.",
    }),
    min_thinking_tokens: z.number().int().min(0).nullish().openapi({
      description: 'Reasoning mode: until this many thinking tokens exist, the end-of-thinking token and EOS are suppressed; each early attempt to end appends "Wait" (at most `wait` times).',
    }),
    max_thinking_tokens: z.number().int().min(1).nullish().openapi({ description: 'Reasoning mode: thinking is closed by force at this many tokens.' }),
    thinking_token_budget: z.number().int().min(1).nullish().openapi({ description: "vLLM's name for max_thinking_tokens." }),
    add_generation_prompt: z.boolean().nullish().openapi({ description: "vLLM extension: end the prompt with the assistant's header (default true)." }),
    continue_final_message: z.boolean().nullish().openapi({ description: 'vLLM extension: continue the final assistant message instead of starting a new one.' }),
    chat_template_kwargs: z.record(z.string(), z.unknown()).nullish().openapi({ description: "vLLM extension: extra variables for the chat template (e.g. Qwen3's enable_thinking)." }),
    wait: z.number().int().min(0).max(64).nullish().openapi({ description: 'Reasoning mode: how many times "Wait" may be appended. Default 1.' }),
  })
  .openapi('ChatCompletionRequest');
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

const Usage = z
  .object({
    prompt_tokens: z.number().int(),
    completion_tokens: z.number().int(),
    total_tokens: z.number().int(),
    completion_tokens_details: z.object({ reasoning_tokens: z.number().int() }).optional(),
  })
  .openapi('Usage');

export const ViewTraceSchema = z
  .object({
    view: z.string().openapi({ description: "The view's fingerprint (the backbone's when nothing is overlaid)." }),
    overlays: z
      .array(z.record(z.string(), z.unknown()))
      .openapi({ description: 'The overlays that ran, in order: {type: plugin, id, sha256} | {type: merge | destroy, spec (with defaults filled in)}.' }),
  })
  .openapi('ViewTrace', { description: 'sfn extension: the view that produced this output.' });

const CompletionLogprobs = z.object({
  tokens: z.array(z.string()),
  token_logprobs: z.array(z.number().nullable()),
  top_logprobs: z.array(z.record(z.string(), z.number()).nullable()),
  text_offset: z.array(z.number().int()),
});

export const CompletionResponse = z
  .object({
    id: z.string(),
    object: z.literal('text_completion'),
    created: z.number().int(),
    model: z.string(),
    choices: z.array(z.object({ index: z.number().int(), text: z.string(), logprobs: CompletionLogprobs.nullable(), finish_reason: z.enum(['stop', 'length']).nullable() })),
    usage: Usage,
    sfn: ViewTraceSchema.optional(),
  })
  .openapi('CompletionResponse');

const TopLogprob = z.object({ token: z.string(), logprob: z.number(), bytes: z.array(z.number().int()) });
const ChatLogprobs = z.object({ content: z.array(TopLogprob.extend({ top_logprobs: z.array(TopLogprob) })) });

export const ChatCompletionResponse = z
  .object({
    id: z.string(),
    object: z.literal('chat.completion'),
    created: z.number().int(),
    model: z.string(),
    choices: z.array(
      z.object({
        index: z.number().int(),
        message: z.object({ role: z.literal('assistant'), content: z.string().nullable(), reasoning_content: z.string().nullable().optional(), reasoning: z.string().nullable().optional() }),
        logprobs: ChatLogprobs.nullable(),
        finish_reason: z.enum(['stop', 'length']).nullable(),
      }),
    ),
    usage: Usage,
    sfn: ViewTraceSchema.optional(),
  })
  .openapi('ChatCompletionResponse');

export const ModelCard = z
  .object({
    id: z.string(),
    object: z.literal('model'),
    created: z.number().int(),
    owned_by: z.string(),
    root: z.string().optional(),
    parent: z.string().nullable().optional(),
    max_model_len: z.number().int().optional().openapi({ description: "The context served (vLLM's field); absent while loading." }),
  })
  .openapi('Model');

export const ModelList = z.object({ object: z.literal('list'), data: z.array(ModelCard) }).openapi('ModelList');

export const ErrorResponse = z.object({ error: z.object({ message: z.string(), type: z.string(), param: z.string().nullable(), code: z.string().nullable() }) }).openapi('Error');

export const errorResponses = (...codes: number[]) => Object.fromEntries(codes.map((c) => [c, { description: ERROR_TEXT[c] ?? 'Error', content: { 'application/json': { schema: ErrorResponse } } }]));

const ERROR_TEXT: Record<number, string> = {
  400: 'Invalid request (the message names the field).',
  401: 'Missing or wrong API key.',
  403: 'The key lacks the admin scope.',
  404: 'Unknown model or resource.',
  409: 'Conflict.',
  413: 'Body too large.',
  429: 'Queue full; retry after the Retry-After header.',
  503: 'The model is still loading.',
};
