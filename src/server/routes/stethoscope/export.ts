/**
 * `POST /v1/stethoscope/export` (admin): a view written as a full Hugging Face checkpoint.
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { checkPluginId } from '../../../plugins/store.ts';
import { DestroySpec, MergeSpec } from '../../../views/spec.ts';
import { ApiError, badRequest, unavailable } from '../../errors.ts';
import { errorResponses } from '../../schemas.ts';
import { engineClient, type StethoscopeDeps } from './shared.ts';

const ExportBody = z
  .strictObject({
    name: z.string().openapi({ description: 'Directory name under <data-dir>/exports/.' }),
    model: z.string().openapi({ description: 'The backbone or `backbone:plugin-id`.' }),
    merge: MergeSpec.nullish(),
    destroy: DestroySpec.nullish(),
    dtype: z.enum(['f32', 'bf16', 'f16']).default('f32'),
    overwrite: z.boolean().default(false),
  })
  .openapi('ExportRequest');

export function exportRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/export',
      summary: 'Write a view (plugin, merge, destruction) as a full Hugging Face checkpoint directory (admin).',
      request: { body: { content: { 'application/json': { schema: ExportBody } }, required: true } },
      responses: {
        201: { description: 'Written.', content: { 'application/json': { schema: z.object({ path: z.string(), tensors: z.number().int() }) } } },
        ...errorResponses(400, 401, 403, 404, 409, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      if (deps.host.state !== 'ready') throw unavailable('The model is still loading.');
      const bad = checkPluginId(body.name);
      if (bad) throw badRequest(`name: ${bad}`, 'name');
      const out = join(deps.dataDir, 'exports', body.name);
      if (existsSync(out) && !body.overwrite) throw new ApiError(409, `export "${body.name}" exists; pass "overwrite": true`, 'invalid_request_error', 'export_exists', 'name');
      const view = deps.resolveView(body.model, { merge: body.merge, destroy: body.destroy });
      try {
        const { tensors } = await engineClient(deps, c.req.raw.signal, { wait: false }).export(view, out, { dtype: body.dtype.toUpperCase() as 'F32' | 'BF16' | 'F16' });
        return c.json({ path: out, tensors }, 201);
      } catch (e) {
        throw badRequest(`export failed: ${(e as Error).message}`);
      }
    },
  );
}
