/**
 * The stethoscope endpoints under `/v1/stethoscope`, one file per endpoint family. Every one of them needs an admin
 * key: the scope is set once here for the whole prefix (the plugin routes' read-only freeze plan is the one user
 * endpoint under it, declared with its route), so a new stethoscope route cannot be open to user keys by mistake.
 */
import type { OpenAPIHono } from '@hono/zod-openapi';
import { requireKey, USER_SCOPED, type AuthConfig } from '../../auth.ts';
import { checkpointRoutes } from './checkpoints.ts';
import { deltaRoutes } from './delta.ts';
import { destructionRoutes } from './destruction.ts';
import { evalRoutes } from './eval.ts';
import { exportRoutes } from './export.ts';
import { freezeRoutes } from './freeze.ts';
import { jobRoutes } from './jobs.ts';
import { levelsRoutes } from './levels.ts';
import { mergeRoutes } from './merge.ts';
import type { StethoscopeDeps } from './shared.ts';

export type { StethoscopeDeps } from './shared.ts';

/** The admin scope for every /v1/stethoscope path but those declared user-scoped; register before any route under it. */
export function stethoscopeAuth(app: OpenAPIHono, auth: AuthConfig): void {
  const user = requireKey(auth, 'user');
  const admin = requireKey(auth, 'admin');
  app.use('/v1/stethoscope/*', (c, next) => (USER_SCOPED.has(`${c.req.method} ${c.req.path}`) ? user(c, next) : admin(c, next)));
}

export function stethoscopeRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  deltaRoutes(app, deps);
  checkpointRoutes(app, deps);
  mergeRoutes(app, deps);
  destructionRoutes(app, deps);
  evalRoutes(app, deps);
  levelsRoutes(app, deps);
  freezeRoutes(app, deps);
  jobRoutes(app, deps);
  exportRoutes(app, deps);
}
