/**
 * `/v1/stethoscope/checkpoints` (admin): donor checkpoints registered by name.
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { checkPluginId } from '../../../plugins/store.ts';
import { ApiError, badRequest, notFound } from '../../errors.ts';
import { requireUnderRoots } from '../../roots.ts';
import { errorResponses } from '../../schemas.ts';
import type { StethoscopeDeps } from './shared.ts';

export function checkpointRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  const Ckpt = z.object({ name: z.string(), path: z.string(), registered: z.number().int() }).openapi('Checkpoint');
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/checkpoints',
      summary: 'Register a donor checkpoint by name (admin): a directory under the model roots; merges name it in "from".',
      request: { body: { content: { 'application/json': { schema: z.strictObject({ name: z.string(), path: z.string() }).openapi('CheckpointRequest') } }, required: true } },
      responses: { 201: { description: 'Registered.', content: { 'application/json': { schema: Ckpt } } }, ...errorResponses(400, 401, 403, 409) },
    }),
    (c) => {
      const { name, path } = c.req.valid('json');
      const bad = checkPluginId(name);
      if (bad) throw badRequest(`name: ${bad}`, 'name');
      if (deps.plugins.store.get(name)) throw new ApiError(409, `"${name}" is a plugin id; donor names and plugin ids share "from"`, 'invalid_request_error', 'name_taken', 'name');
      return c.json(deps.checkpoints.register(name, requireUnderRoots(deps.modelRoots, path, 'path')), 201);
    },
  );
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/checkpoints',
      summary: 'Registered donor checkpoints (admin).',
      responses: { 200: { description: 'Checkpoints.', content: { 'application/json': { schema: z.object({ object: z.literal('list'), data: z.array(Ckpt) }) } } }, ...errorResponses(401, 403) },
    }),
    (c) => c.json({ object: 'list' as const, data: deps.checkpoints.list() }, 200),
  );
  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/stethoscope/checkpoints/{name}',
      summary: 'Forget a registered donor checkpoint (admin); its files are not touched.',
      request: { params: z.object({ name: z.string().openapi({ param: { name: 'name', in: 'path' } }) }) },
      responses: { 200: { description: 'Forgotten.', content: { 'application/json': { schema: z.object({ name: z.string(), deleted: z.literal(true) }) } } }, ...errorResponses(401, 403, 404) },
    }),
    (c) => {
      const { name } = c.req.valid('param');
      if (!deps.checkpoints.remove(name)) throw notFound(`no registered checkpoint "${name}"`, 'checkpoint_not_found');
      return c.json({ name, deleted: true as const }, 200);
    },
  );
}
