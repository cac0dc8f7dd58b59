/**
 * `GET /v1/models` and `GET /v1/models/{id}`: the backbone and every plugin as `backbone:plugin-id`.
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import type { AuthConfig } from '../../auth.ts';
import { requireKey } from '../../auth.ts';
import { modelNotFound } from '../../errors.ts';
import { errorResponses, ModelCard, ModelList } from '../../schemas.ts';
import type { ModelEntry, ServingContext } from './shared.ts';

export const modelsRoute = createRoute({
  method: 'get',
  path: '/v1/models',
  summary: 'List the backbone and every plugin (as `backbone:plugin-id`).',
  responses: { 200: { description: 'Models.', content: { 'application/json': { schema: ModelList } } }, ...errorResponses(401) },
});

export const modelRoute = createRoute({
  method: 'get',
  path: '/v1/models/{id}',
  summary: 'One model card: the backbone or `backbone:plugin-id`.',
  request: { params: z.object({ id: z.string().openapi({ param: { name: 'id', in: 'path' } }) }) },
  responses: { 200: { description: 'The model.', content: { 'application/json': { schema: ModelCard } } }, ...errorResponses(401, 404) },
});

export function modelRoutes(app: OpenAPIHono, ctx: ServingContext, auth: AuthConfig): void {
  app.use('/v1/models', requireKey(auth, 'user'));
  const card = (m: ModelEntry) => ({
    id: m.id,
    object: 'model' as const,
    created: m.created,
    owned_by: 'sfn',
    root: m.parent ?? m.id,
    parent: m.parent,
    max_model_len: ctx.tokenizer() ? ctx.maxContext() : undefined,
  });
  app.openapi(modelsRoute, (c) => c.json({ object: 'list' as const, data: ctx.models().map(card) }));
  app.use('/v1/models/*', requireKey(auth, 'user'));
  const one = (id: string) => {
    const m = ctx.models().find((x) => x.id === id);
    if (!m) throw modelNotFound(id);
    return card(m);
  };
  app.openapi(modelRoute, (c) => c.json(one(c.req.valid('param').id), 200));
  // Hugging Face style names (`--served-model-name Org/name`) also answer unencoded, as clients like curl send them.
  app.get('/v1/models/:id{.+}', (c) => c.json(one(c.req.param('id'))));
}
