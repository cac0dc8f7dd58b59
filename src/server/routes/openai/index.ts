/**
 * The OpenAI-compatible surface: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models[/{id}]`,
 * one file per endpoint. Semantics follow OpenAI's API (and vLLM's extensions where OpenAI is silent): n choices
 * per prompt, SSE streaming with a final `data: [DONE]`, logprobs, echo, token-id prompts, usage, finish_reason.
 * Every endpoint takes a user key.
 */
import type { OpenAPIHono } from '@hono/zod-openapi';
import { requireKey, type AuthConfig } from '../../auth.ts';
import { chat, chatBodyBound, chatRoute } from './chat.ts';
import { completions, completionsRoute } from './completions.ts';
import { modelRoutes } from './models.ts';
import { tokenizeRoutes } from './tokenize.ts';
import type { ServingContext } from './shared.ts';

export type { ModelEntry, ServingContext } from './shared.ts';

export function openaiRoutes(app: OpenAPIHono, ctx: ServingContext, auth: AuthConfig, version = '0.1.0'): void {
  app.use('/v1/completions', requireKey(auth, 'user'));
  app.use('/v1/chat/completions', requireKey(auth, 'user'), chatBodyBound(ctx));
  app.openapi(completionsRoute, (c) => completions(ctx, c, c.req.valid('json')) as never);
  app.openapi(chatRoute, (c) => chat(ctx, c, c.req.valid('json')) as never);
  modelRoutes(app, ctx, auth);
  tokenizeRoutes(app, ctx, auth, version);
}
