/**
 * `POST /v1/stethoscope/delta` (admin): a delta report job.
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { badRequest, notFound } from '../../errors.ts';
import { requireUnderRoots } from '../../roots.ts';
import { checkpointSource, computeDelta, pluginSource, type WeightSource } from '../../../stethoscope/delta.ts';
import { writeDeltaOutputs } from '../../../stethoscope/plots.ts';
import { errorResponses } from '../../schemas.ts';
import { jobView, JobSchema, type StethoscopeDeps } from './shared.ts';

const DeltaBody = z
  .strictObject({
    a: z.string().optional().openapi({ description: 'Checkpoint A: a directory under the model roots. Default: the served backbone.' }),
    b: z.string().optional().openapi({ description: 'Checkpoint B: a registered checkpoint name, or a directory under the model roots.' }),
    plugin: z.string().optional().openapi({ description: 'Instead of b: a plugin id, laid over the backbone (A defaults to the backbone).' }),
    bins: z.number().int().min(2).max(1000).default(50),
    every: z.number().int().min(1).default(1).openapi({ description: 'Histogram panels every k layers.' }),
  })
  .openapi('DeltaRequest');

export function deltaRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/delta',
      summary: 'Start a delta report job (admin): per module x layer ||B-A||, relative change histograms, bimodality, charts.',
      request: { body: { content: { 'application/json': { schema: DeltaBody } }, required: true } },
      responses: { 202: { description: 'Started; poll GET /v1/stethoscope/jobs/{id}.', content: { 'application/json': { schema: JobSchema } } }, ...errorResponses(400, 401, 403, 404, 429) },
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
        // A registered checkpoint name, as merges accept it in "from", else a directory under the model roots.
        const b = deps.checkpoints.get(body.b!)?.path ?? requireUnderRoots(deps.modelRoots, body.b!, 'b');
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
      return c.json(jobView(deps, job), 202);
    },
  );
}
