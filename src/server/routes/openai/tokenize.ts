/**
 * vLLM's `POST /tokenize`, `POST /detokenize` and `GET /version`: token ids as the server encodes a prompt (plain
 * text as transformers does, BOS included; messages through the chat template), and text back from ids.
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { PromptError } from '../../../engine/prompt.ts';
import { requireKey, type AuthConfig } from '../../auth.ts';
import { badRequest, modelNotFound } from '../../errors.ts';
import { errorResponses } from '../../schemas.ts';
import { ready, type ServingContext } from './shared.ts';

const TokenizeBody = z
  .strictObject({
    model: z.string().min(1),
    prompt: z.string().optional(),
    messages: z.array(z.strictObject({ role: z.enum(['system', 'developer', 'user', 'assistant']), content: z.string() })).optional(),
    add_special_tokens: z.boolean().optional().openapi({ description: 'For `prompt`: add BOS/EOS as the tokenizer does (default true, as transformers).' }),
    add_generation_prompt: z.boolean().optional().openapi({ description: 'For `messages`: end with the assistant header (default true).' }),
  })
  .openapi('TokenizeRequest');
const TokenizeResponse = z.object({ count: z.number().int(), max_model_len: z.number().int(), tokens: z.array(z.number().int()) }).openapi('TokenizeResponse');
const DetokenizeBody = z.strictObject({ model: z.string().min(1), tokens: z.array(z.number().int().min(0)).max(1_000_000) }).openapi('DetokenizeRequest');

export function tokenizeRoutes(app: OpenAPIHono, ctx: ServingContext, auth: AuthConfig, version: string): void {
  const known = (model: string) => {
    if (!ctx.models().some((m) => m.id === model)) throw modelNotFound(model);
  };
  app.use('/tokenize', requireKey(auth, 'user'));
  app.use('/detokenize', requireKey(auth, 'user'));
  app.openapi(
    createRoute({
      method: 'post',
      path: '/tokenize',
      summary: 'Token ids of a prompt or of chat messages, as generation would encode them (vLLM).',
      request: { body: { content: { 'application/json': { schema: TokenizeBody } }, required: true } },
      responses: { 200: { description: 'The ids.', content: { 'application/json': { schema: TokenizeResponse } } }, ...errorResponses(400, 401, 404, 503) },
    }),
    async (c) => {
      const body = c.req.valid('json');
      ready(ctx);
      known(body.model);
      if ((body.prompt === undefined) === (body.messages === undefined)) throw badRequest('give exactly one of "prompt" and "messages"', 'prompt');
      let tokens: number[];
      // Any length is counted (as vLLM does), large inputs in the tokenizer's thread.
      if (body.prompt !== undefined) [tokens] = await ctx.prompts.encodeTexts([body.prompt], body.add_special_tokens !== false, null);
      else {
        try {
          const messages = body.messages!.map((m) => ({ role: m.role === 'developer' ? 'system' : m.role, content: m.content }));
          ({ ids: tokens } = await ctx.prompts.chatPrompt(messages, undefined, { addGenerationPrompt: body.add_generation_prompt !== false }, null));
        } catch (e) {
          if (e instanceof PromptError || (e as Error).name === 'ChatTemplateError') throw badRequest((e as Error).message, 'messages');
          throw e;
        }
      }
      return c.json({ count: tokens.length, max_model_len: ctx.maxContext(), tokens }, 200);
    },
  );
  app.openapi(
    createRoute({
      method: 'post',
      path: '/detokenize',
      summary: 'The text of token ids (vLLM).',
      request: { body: { content: { 'application/json': { schema: DetokenizeBody } }, required: true } },
      responses: {
        200: { description: 'The text.', content: { 'application/json': { schema: z.object({ prompt: z.string() }).openapi('DetokenizeResponse') } } },
        ...errorResponses(400, 401, 404, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      ready(ctx);
      known(body.model);
      const V = ctx.vocabSize();
      const bad = body.tokens.find((t) => t >= V);
      if (bad !== undefined) throw badRequest(`tokens: token id ${bad} is outside the vocabulary (0..${V - 1})`, 'tokens');
      return c.json({ prompt: await ctx.prompts.decode(body.tokens, false) }, 200);
    },
  );
  app.openapi(
    createRoute({
      method: 'get',
      path: '/version',
      summary: "sfn's version (vLLM's endpoint).",
      responses: { 200: { description: 'The version.', content: { 'application/json': { schema: z.object({ version: z.string() }) } } } },
    }),
    (c) => c.json({ version }, 200),
  );
}
