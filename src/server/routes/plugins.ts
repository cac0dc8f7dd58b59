/**
 * Plugins over HTTP: upload (streamed to disk with a size limit and sha256 on the way, validated against
 * the backbone, committed atomically), list, get, delete, extraction from two checkpoints under the
 * configured model roots, and the Freeze plan.
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { createWriteStream, rmSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { readSpec } from '../../model/config.ts';
import { MODULE_SETS, parseModuleSets, type Audit } from '../../plugins/extract.ts';
import { runInThread } from '../../util/thread-task.ts';
import { freezePlan } from '../../plugins/freeze-plan.ts';
import { checkPluginId, Manifest, PluginExistsError, PluginNameTakenError, sha256File, type PluginStore } from '../../plugins/store.ts';
import { PluginError, validatePluginInThread, type Backbone } from '../../plugins/validate.ts';
import { requireKey, USER_SCOPED, type AuthConfig } from '../auth.ts';
import { ApiError, badRequest, notFound, tooLarge, unavailable } from '../errors.ts';
import { errorResponses } from '../schemas.ts';
import { requireUnderRoots } from '../roots.ts';

export interface PluginDeps {
  store: PluginStore;
  backbone: () => Backbone | null;
  backboneName: string;
  maxPluginBytes: number;
  /** Directories under which extraction may read checkpoints. */
  modelRoots: string[];
}

export const PluginSchema = Manifest.extend({
  object: z.literal('plugin'),
  model: z.string().openapi({ description: 'The name to call it by: `backbone:id`.' }),
}).openapi('Plugin');

const KindAuditSchema = z.object({ kind: z.string(), max_abs_diff: z.number(), tensor: z.string().nullable().openapi({ description: 'Where the largest difference is.' }) });

const AuditSchema = z
  .object({
    base: z.string(),
    tuned: z.string(),
    base_fingerprint: z.string(),
    extracted: z.array(z.string()),
    tensors: z.number().int(),
    exact: z.boolean().openapi({ description: 'True when every module left out is identical in A and B: the plugin reproduces B exactly.' }),
    not_extracted: z.array(KindAuditSchema),
    notes: z.array(z.string()),
  })
  .openapi('ExtractAudit');

const FreezePlanSchema = z
  .object({
    model: z.string(),
    total_parameters: z.number().int(),
    norm_parameters: z.number().int(),
    tied_embeddings: z.boolean(),
    per_module: z.record(z.string(), z.number().int()).openapi({ description: 'Parameters per module kind, over all layers.' }),
    sets: z.array(
      z.object({
        name: z.string(),
        modules: z.array(z.string()),
        trainable: z.number().int(),
        fraction: z.number().openapi({ description: 'trainable / total_parameters.' }),
        trainable_with_norms: z.number().int(),
      }),
    ),
  })
  .openapi('FreezePlan');

const UploadQuery = z.object({
  id: z.string().openapi({ description: 'Plugin id: letters, digits, ".", "_", "-"; called as `backbone:id`.' }),
  description: z.string().max(1000).optional(),
  overwrite: z.enum(['true', 'false']).optional().openapi({ description: 'Replace an existing plugin with different bytes (else 409).' }),
});

const ExtractBody = z
  .strictObject({
    id: z.string(),
    base: z.string().openapi({ description: 'Base checkpoint directory (A), relative to a model root or absolute inside one.' }),
    tuned: z.string().openapi({ description: 'Fine-tuned checkpoint directory (B).' }),
    modules: z
      .union([z.string(), z.array(z.enum(Object.keys(MODULE_SETS) as [string, ...string[]]))])
      .optional()
      .openapi({ description: 'Module sets: o_proj, norms, embed, head. Default all four.' }),
    description: z.string().max(1000).optional(),
    overwrite: z.boolean().optional(),
  })
  .openapi('ExtractRequest');

function view(m: Manifest, backboneName: string) {
  return { object: 'plugin' as const, model: `${backboneName}:${m.id}`, ...m };
}

function pluginError(e: PluginError): ApiError {
  return new ApiError(400, `invalid plugin: ${e.message}`, 'invalid_request_error', `invalid_plugin.${e.rule}`, e.tensor ?? null);
}

/** Streams a request body into a file, hashing it, stopping at `max` bytes (413). */
async function receive(body: ReadableStream<Uint8Array> | null, path: string, max: number): Promise<{ sha256: string; size: number }> {
  if (!body) throw badRequest('the request has no body: send the safetensors bytes', 'body');
  const hash = createHash('sha256');
  const out = createWriteStream(path, { flags: 'wx' });
  let size = 0;
  try {
    for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
      size += chunk.byteLength;
      if (size > max) throw tooLarge(`the plugin exceeds the ${max}-byte limit`);
      hash.update(chunk);
      if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
    }
    await new Promise<void>((res, rej) => out.end((e?: Error | null) => (e ? rej(e) : res())));
    // Data is fsynced when the store renames it in; the bytes are checked by validation before that.
    return { sha256: hash.digest('hex'), size };
  } catch (e) {
    out.destroy();
    rmSync(path, { force: true });
    // The client went away (or the upload timed out): nothing to store, and nobody left to answer.
    if ((e as NodeJS.ErrnoException).code === 'ECONNRESET' || (e as Error).message === 'aborted') throw badRequest('the upload ended before its last byte', 'body', 'upload_incomplete');
    throw e;
  }
}

/** Validates a file in the store's temp area and commits it as `id`; the file is gone either way. */
export async function commitPluginFile(
  store: PluginStore,
  backbone: Backbone,
  tmp: string,
  id: string,
  sha256: string,
  size: number,
  description: string,
  overwrite: boolean,
): Promise<{ status: 200 | 201; manifest: Manifest }> {
  try {
    const summary = await validatePluginInThread(tmp, backbone);
    const { created, manifest } = await store.commit(tmp, id, sha256, size, summary, description, overwrite);
    return { status: created ? 201 : 200, manifest };
  } catch (e) {
    rmSync(tmp, { force: true });
    if (e instanceof PluginError) throw pluginError(e);
    if (e instanceof PluginExistsError) throw new ApiError(409, e.message, 'invalid_request_error', 'plugin_exists', 'id');
    if (e instanceof PluginNameTakenError) throw new ApiError(409, e.message, 'invalid_request_error', 'name_taken', 'id');
    throw e;
  }
}

export function pluginView(m: Manifest, backboneName: string) {
  return view(m, backboneName);
}

export function pluginRoutes(app: OpenAPIHono, deps: PluginDeps, auth: AuthConfig): void {
  const { store } = deps;
  const backbone = () => {
    const b = deps.backbone();
    if (!b) throw unavailable('The model is still loading.');
    return b;
  };

  const admit = (tmp: string, id: string, sha256: string, size: number, description: string, overwrite: boolean) => commitPluginFile(store, backbone(), tmp, id, sha256, size, description, overwrite);

  app.use('/v1/plugins', async (c, next) => requireKey(auth, c.req.method === 'GET' ? 'user' : 'admin')(c, next));
  app.use('/v1/plugins/*', async (c, next) => requireKey(auth, c.req.method === 'GET' ? 'user' : 'admin')(c, next));

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/plugins',
      summary: 'Upload a plugin (admin): the raw bytes of a safetensors file of o_proj / norm / embed_tokens / lm_head tensors.',
      request: { query: UploadQuery, body: { content: { 'application/octet-stream': { schema: z.any().openapi({ type: 'string', format: 'binary' }) } }, required: true } },
      responses: {
        201: { description: 'Stored.', content: { 'application/json': { schema: PluginSchema } } },
        200: { description: 'The same bytes were already stored under this id.', content: { 'application/json': { schema: PluginSchema } } },
        ...errorResponses(400, 401, 403, 409, 413, 503),
      },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const bad = checkPluginId(q.id);
      if (bad) throw badRequest(`id: ${bad}`, 'id');
      backbone();
      const tmp = store.tempPath();
      const { sha256, size } = await receive(c.req.raw.body, tmp, deps.maxPluginBytes);
      const r = await admit(tmp, q.id, sha256, size, q.description ?? '', q.overwrite === 'true');
      return c.json(view(r.manifest, deps.backboneName), r.status) as never;
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/plugins',
      summary: 'List plugins.',
      responses: { 200: { description: 'Plugins.', content: { 'application/json': { schema: z.object({ object: z.literal('list'), data: z.array(PluginSchema) }) } } }, ...errorResponses(401) },
    }),
    (c) => c.json({ object: 'list' as const, data: store.list().map((m) => view(m, deps.backboneName)) }),
  );

  const IdParam = z.object({ id: z.string().openapi({ param: { name: 'id', in: 'path' } }) });
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/plugins/{id}',
      summary: "Get a plugin's manifest.",
      request: { params: IdParam },
      responses: { 200: { description: 'The plugin.', content: { 'application/json': { schema: PluginSchema } } }, ...errorResponses(401, 404) },
    }),
    (c) => {
      const m = store.get(c.req.valid('param').id);
      if (!m) throw notFound(`no plugin "${c.req.valid('param').id}"`, 'plugin_not_found');
      return c.json(view(m, deps.backboneName), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/plugins/{id}',
      summary: 'Delete a plugin (admin). Requests already running on it finish.',
      request: { params: IdParam },
      responses: {
        200: { description: 'Deleted.', content: { 'application/json': { schema: z.object({ id: z.string(), object: z.literal('plugin'), deleted: z.literal(true) }) } } },
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => {
      const id = c.req.valid('param').id;
      if (!(await store.delete(id))) throw notFound(`no plugin "${id}"`, 'plugin_not_found');
      return c.json({ id, object: 'plugin' as const, deleted: true as const }, 200);
    },
  );

  const underRoots = (p: string, param: string) => requireUnderRoots(deps.modelRoots, p, param);

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/plugins/extract',
      summary: 'Extract a plugin from a fine-tune B of base A (admin), with an audit of the modules left out.',
      request: { body: { content: { 'application/json': { schema: ExtractBody } }, required: true } },
      responses: {
        201: { description: 'Extracted and stored; `audit` says whether the plugin is exact.', content: { 'application/json': { schema: z.object({ plugin: PluginSchema, audit: AuditSchema }) } } },
        ...errorResponses(400, 401, 403, 409, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      const bad = checkPluginId(body.id);
      if (bad) throw badRequest(`id: ${bad}`, 'id');
      const base = underRoots(body.base, 'base');
      const tuned = underRoots(body.tuned, 'tuned');
      let kinds;
      try {
        kinds = parseModuleSets(Array.isArray(body.modules) ? body.modules.join(',') : (body.modules ?? 'o_proj,norms,embed,head'));
      } catch (e) {
        throw badRequest((e as Error).message, 'modules');
      }
      if (store.get(body.id) && !body.overwrite) throw new ApiError(409, `plugin "${body.id}" exists; pass "overwrite": true to replace it`, 'invalid_request_error', 'plugin_exists', 'id');
      const tmp = store.tempPath();
      let audit;
      try {
        // Reading and comparing two checkpoints takes seconds at 0.5B: off the HTTP thread.
        audit = await runInThread<Audit>(new URL('../../plugins/extract.ts', import.meta.url), 'extractPlugin', [base, tuned, kinds, tmp, body.description ?? '']);
      } catch (e) {
        rmSync(tmp, { force: true });
        rmSync(`${tmp}.audit.json`, { force: true });
        throw badRequest(`extraction failed: ${(e as Error).message}`);
      }
      rmSync(`${tmp}.audit.json`, { force: true });
      const r = await admit(tmp, body.id, await sha256File(tmp), statSync(tmp).size, body.description ?? '', body.overwrite ?? false);
      return c.json({ plugin: view(r.manifest, deps.backboneName), audit }, 201) as never;
    },
  );

  // The one user endpoint under /v1/stethoscope (admin by default): the plan reads no weights.
  USER_SCOPED.add('GET /v1/stethoscope/freeze-plan');
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/freeze-plan',
      summary: 'Trainable parameters of the Freeze module sets (Emb+Head, +o_proj, +{q,k,v,o}_proj, All), norms apart.',
      request: { query: z.object({ model: z.string().optional().openapi({ description: 'A checkpoint directory under the model roots; default the backbone.' }) }) },
      responses: { 200: { description: 'The plan.', content: { 'application/json': { schema: FreezePlanSchema } } }, ...errorResponses(400, 401, 403, 503) },
    }),
    (c) => {
      const model = c.req.valid('query').model;
      let spec;
      try {
        spec = model ? readSpec(underRoots(model, 'model')).spec : backbone().spec;
      } catch (e) {
        if (e instanceof ApiError) throw e;
        throw badRequest((e as Error).message, 'model');
      }
      return c.json({ model: model ?? deps.backboneName, ...freezePlan(spec) }, 200);
    },
  );
}
