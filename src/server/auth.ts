/**
 * Bearer API keys. Two scopes: a user key may generate; an admin key may also write and probe (plugins,
 * stethoscopes). With no keys configured the server is open (and says so at start).
 */
import { timingSafeEqual } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import { errorResponse, forbidden, unauthorized } from './errors.ts';

export interface AuthConfig {
  apiKeys: string[];
  adminKeys: string[];
}

export type Scope = 'user' | 'admin';

/** Paths under /v1/stethoscope (admin by default) that user keys may call, as 'METHOD /path', declared by their routes. */
export const USER_SCOPED = new Set<string>();

const same = (a: string, b: string) => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

export function authEnabled(cfg: AuthConfig): boolean {
  return cfg.apiKeys.length + cfg.adminKeys.length > 0;
}

/** Checks the bearer key for a scope; a no-op when no keys are configured. */
export function requireKey(cfg: AuthConfig, scope: Scope): MiddlewareHandler {
  return async (c, next) => {
    if (!authEnabled(cfg)) return next();
    const header = c.req.header('authorization') ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(header);
    if (!m) return errorResponse(c, unauthorized('Missing API key: send "Authorization: Bearer <key>".'));
    const key = m[1].trim();
    const admin = cfg.adminKeys.some((k) => same(k, key));
    const user = admin || cfg.apiKeys.some((k) => same(k, key));
    if (!user) return errorResponse(c, unauthorized('Incorrect API key provided.'));
    if (scope === 'admin' && !admin) return errorResponse(c, forbidden('This endpoint needs an admin API key.'));
    return next();
  };
}
