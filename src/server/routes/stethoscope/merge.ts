/**
 * `POST /v1/stethoscope/merge` (admin): probes of a merge, and merges saved as plugins.
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { checkPluginId } from '../../../plugins/store.ts';
import { rmSync, statSync } from 'node:fs';
import { MergeSpec } from '../../../views/spec.ts';
import { badRequest } from '../../errors.ts';
import { DEFAULT_THRESHOLDS } from '../../../stethoscope/levels.ts';
import { parseName, PLUGGABLE_KINDS } from '../../../model/names.ts';
import { sha256File } from '../../../plugins/store.ts';
import { runInThread } from '../../../util/thread-task.ts';
import { commitPluginFile, PluginSchema, pluginView } from '../plugins.ts';
import { ProbePrompt } from '../../../stethoscope/probe.ts';
import { errorResponses } from '../../schemas.ts';
import { compare, probeResultsSchema, Thresholds, Scorer, type StethoscopeDeps } from './shared.ts';
import { ready } from '../openai/shared.ts';

const MergeBody = z
  .strictObject({
    model: z.string().optional().openapi({ description: 'The backbone (default) or `backbone:plugin-id`.' }),
    merge: MergeSpec,
    prompts: z.array(ProbePrompt).min(1).max(64).optional(),
    max_tokens: z.number().int().min(1).max(4096).default(64),
    thresholds: Thresholds.optional(),
    scorer: Scorer,
    save_as: z.string().optional().openapi({ description: 'Save the merged tensors as this plugin id (pluggable kinds only).' }),
    description: z.string().max(1000).optional(),
    overwrite: z.boolean().default(false),
  })
  .openapi('MergeRequest');

const MergeResponse = z
  .object({
    object: z.literal('stethoscope.merge'),
    model: z.string(),
    merge: MergeSpec,
    plugin: PluginSchema.optional().openapi({ description: 'The saved plugin, with `save_as`.' }),
    results: probeResultsSchema('merged').optional().openapi({ description: 'With `prompts`: each prompt through the intact and the merged view.' }),
  })
  .openapi('MergeResponse');

export function mergeRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/merge',
      summary: 'A merge (admin): run prompts through the intact and the merged view with levels, and/or save a merge of pluggable kinds as a plugin.',
      request: { body: { content: { 'application/json': { schema: MergeBody } }, required: true } },
      responses: {
        200: { description: 'Outputs and levels.', content: { 'application/json': { schema: MergeResponse } } },
        201: { description: 'Saved as a plugin (and, with prompts, outputs and levels).', content: { 'application/json': { schema: MergeResponse } } },
        ...errorResponses(400, 401, 403, 404, 409, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      ready(deps.serving);
      if (!body.prompts && !body.save_as) throw badRequest('give "prompts", "save_as", or both', 'prompts');
      const model = body.model ?? deps.backboneName;
      const merged = deps.resolveView(model, { merge: body.merge });
      const out: Record<string, unknown> = { object: 'stethoscope.merge', model, merge: body.merge };
      let status: 200 | 201 = 200;
      if (body.save_as) {
        if (model !== deps.backboneName) throw badRequest('save_as: a saved merge is a plugin over the backbone itself; use the backbone as "model"', 'model');
        const bad = checkPluginId(body.save_as);
        if (bad) throw badRequest(`save_as: ${bad}`, 'save_as');
        const spec = merged.overlays.find((o) => o.type === 'merge')!;
        if (spec.type !== 'merge') throw new Error('unreachable');
        for (const [i, e] of spec.entries.entries()) {
          const frozen = e.names.find((n) => !PLUGGABLE_KINDS.includes(parseName(n)!.kind));
          if (frozen) throw badRequest(`merge.${i}.modules: "${frozen}" is frozen in the backbone; only ${PLUGGABLE_KINDS.join(', ')} can be saved as a plugin`, `merge.${i}.modules`);
        }
        const tmp = deps.plugins.store.tempPath();
        try {
          // Reading the donor's tensors and writing the plugin take seconds at 0.5B: off the HTTP thread.
          await runInThread(new URL('../../../stethoscope/merge.ts', import.meta.url), 'writeMergePlugin', [spec, deps.backboneDir, tmp, deps.host.fingerprint!]);
        } catch (e) {
          rmSync(tmp, { force: true });
          throw badRequest(`merge: ${(e as Error).message}`, 'merge');
        }
        const r = await commitPluginFile(
          deps.plugins.store,
          { spec: deps.host.spec!, fingerprint: deps.host.fingerprint! },
          tmp,
          body.save_as,
          await sha256File(tmp),
          statSync(tmp).size,
          body.description ?? '',
          body.overwrite,
        );
        out.plugin = pluginView(r.manifest, deps.backboneName);
        status = 201;
      }
      if (body.prompts)
        out.results = await compare(
          deps,
          deps.resolveView(model),
          merged,
          body.prompts,
          { maxTokens: body.max_tokens, thresholds: { ...DEFAULT_THRESHOLDS, ...body.thresholds }, scorer: body.scorer, label: 'merged' },
          c.req.raw.signal,
        );
      return c.json(out, status) as never;
    },
  );
}
