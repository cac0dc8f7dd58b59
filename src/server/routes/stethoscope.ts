/**
 * The stethoscopes' admin endpoints that act on whole views. `POST /v1/stethoscope/export` writes a view
 * (backbone or plugin, plus merge / destroy) as a full HF checkpoint directory under the data directory.
 */
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { existsSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import type { EngineHost } from '../../engine/host.ts';
import type { ViewSpec } from '../../engine/protocol.ts';
import { checkPluginId } from '../../plugins/store.ts';
import { DestroySpec, MergeSpec } from '../../stethoscope/spec.ts';
import { requireKey, type AuthConfig } from '../auth.ts';
import { ApiError, badRequest, notFound, unavailable } from '../errors.ts';
import { requireUnderRoots } from '../roots.ts';
import { checkpointSource, computeDelta, pluginSource, type WeightSource } from '../../stethoscope/delta.ts';
import type { JobManager, JobRecord } from '../../stethoscope/jobs.ts';
import { writeDeltaOutputs } from '../../stethoscope/plots.ts';
import { errorResponses } from '../schemas.ts';

export interface StethoscopeDeps {
  host: EngineHost;
  dataDir: string;
  resolveView: (model: string, stethoscope?: { merge?: unknown; destroy?: unknown }) => ViewSpec;
  jobs: JobManager;
  modelRoots: string[];
  /** A plugin's file by id (for a delta of backbone vs plugin). */
  pluginFile: (id: string) => string | undefined;
  backboneDir: string;
}

const DeltaBody = z
  .object({
    a: z.string().optional().openapi({ description: 'Checkpoint A: a directory under the model roots. Default: the served backbone.' }),
    b: z.string().optional().openapi({ description: 'Checkpoint B: a directory under the model roots.' }),
    plugin: z.string().optional().openapi({ description: 'Instead of b: a plugin id, laid over the backbone (A defaults to the backbone).' }),
    bins: z.number().int().min(2).max(1000).default(50),
    every: z.number().int().min(1).default(1).openapi({ description: 'Histogram panels every k layers.' }),
  })
  .openapi('DeltaRequest');

const Job = z
  .object({
    id: z.string(),
    object: z.literal('stethoscope.job'),
    kind: z.string(),
    status: z.enum(['queued', 'running', 'succeeded', 'failed']),
    created: z.number().int(),
    started: z.number().int().nullable(),
    finished: z.number().int().nullable(),
    progress: z.object({ done: z.number().int(), total: z.number().int(), message: z.string() }),
    params: z.any(),
    result: z.any(),
    error: z.string().nullable(),
    files: z.array(z.string()),
  })
  .openapi('Job');

const CONTENT_TYPES: Record<string, string> = { '.json': 'application/json', '.csv': 'text/csv', '.svg': 'image/svg+xml', '.html': 'text/html; charset=utf-8', '.jsonl': 'application/x-ndjson' };

const ExportBody = z
  .object({
    name: z.string().openapi({ description: 'Directory name under <data-dir>/exports/.' }),
    model: z.string().openapi({ description: 'The backbone or `backbone:plugin-id`.' }),
    merge: MergeSpec.nullish(),
    destroy: DestroySpec.nullish(),
    dtype: z.enum(['f32', 'bf16', 'f16']).default('f32'),
    overwrite: z.boolean().default(false),
  })
  .openapi('ExportRequest');

export function stethoscopeRoutes(app: OpenAPIHono, deps: StethoscopeDeps, auth: AuthConfig): void {
  for (const p of ['/v1/stethoscope/export', '/v1/stethoscope/delta', '/v1/stethoscope/jobs', '/v1/stethoscope/jobs/*']) app.use(p, requireKey(auth, 'admin'));
  const jobView = (j: JobRecord) => ({ ...j, files: deps.jobs.files(j.id) });

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/delta',
      summary: 'Start a delta report job (admin): per module x layer ||B-A||, relative change histograms, bimodality, charts.',
      request: { body: { content: { 'application/json': { schema: DeltaBody } }, required: true } },
      responses: { 202: { description: 'Started; poll GET /v1/stethoscope/jobs/{id}.', content: { 'application/json': { schema: Job } } }, ...errorResponses(400, 401, 403, 404) },
    }),
    (c) => {
      const body = c.req.valid('json');
      if ((body.b === undefined) === (body.plugin === undefined)) throw badRequest('give exactly one of "b" (a checkpoint) and "plugin"', 'b');
      const a = body.a === undefined ? deps.backboneDir : requireUnderRoots(deps.modelRoots, body.a, 'a');
      let open: () => [WeightSource, WeightSource];
      if (body.plugin !== undefined) {
        const file = deps.pluginFile(body.plugin);
        if (!file) throw notFound(`no plugin "${body.plugin}"`, 'plugin_not_found');
        open = () => [checkpointSource(a), pluginSource(a, file)];
      } else {
        const b = requireUnderRoots(deps.modelRoots, body.b!, 'b');
        open = () => [checkpointSource(a), checkpointSource(b)];
      }
      const job = deps.jobs.start('delta', body, async (_job, dir, progress) => {
        const [sa, sb] = open();
        try {
          const report = await computeDelta(sa, sb, { bins: body.bins, onProgress: (d, t, name) => progress(d, t, name) });
          await writeDeltaOutputs(report, dir, body.every);
          return { kinds: report.kinds, modules: report.modules.length };
        } finally {
          sa.close();
          sb.close();
        }
      });
      return c.json(jobView(job), 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs',
      summary: 'List stethoscope jobs (admin), newest first.',
      responses: { 200: { description: 'Jobs.', content: { 'application/json': { schema: z.object({ object: z.literal('list'), data: z.array(Job) }) } } }, ...errorResponses(401, 403) },
    }),
    (c) => c.json({ object: 'list' as const, data: deps.jobs.list().map(jobView) }, 200),
  );

  const JobParam = z.object({ id: z.string().openapi({ param: { name: 'id', in: 'path' } }) });
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs/{id}',
      summary: 'A job: status, progress, result, output files (admin).',
      request: { params: JobParam },
      responses: { 200: { description: 'The job.', content: { 'application/json': { schema: Job } } }, ...errorResponses(401, 403, 404) },
    }),
    (c) => {
      const j = deps.jobs.get(c.req.valid('param').id);
      if (!j) throw notFound(`no job "${c.req.valid('param').id}"`, 'job_not_found');
      return c.json(jobView(j), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs/{id}/files/{name}',
      summary: 'One output file of a job (JSON, CSV, SVG, HTML) (admin).',
      request: { params: JobParam.extend({ name: z.string().openapi({ param: { name: 'name', in: 'path' } }) }) },
      responses: { 200: { description: 'The file.', content: { 'application/octet-stream': { schema: z.any() } } }, ...errorResponses(401, 403, 404) },
    }),
    (c) => {
      const { id, name } = c.req.valid('param');
      if (!deps.jobs.get(id) || !deps.jobs.files(id).includes(name)) throw notFound(`no file "${name}" in job "${id}"`, 'file_not_found');
      c.header('Content-Type', CONTENT_TYPES[extname(name)] ?? 'application/octet-stream');
      return c.body(readFileSync(join(deps.jobs.dir(id), name))) as never;
    },
  );
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
        const { tensors } = await deps.host.export(view, out, body.dtype.toUpperCase() as 'F32' | 'BF16' | 'F16');
        return c.json({ path: out, tensors }, 201);
      } catch (e) {
        throw badRequest(`export failed: ${(e as Error).message}`);
      }
    },
  );
}
