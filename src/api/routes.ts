import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import type { Agent } from '../agent/agent.js'
import { BadRequestError } from '../errors.js'
import { formatDuration, parseDuration } from '../util/duration.js'

/** Parse a request body with a zod schema; a mismatch is a 400 naming the field. */
function body<T> (schema: z.ZodType<T>, value: unknown): T {
  const r = schema.safeParse(value ?? {})
  if (r.success) return r.data
  const issue = r.error.issues[0]
  const where = issue.path.length > 0 ? `\`${issue.path.join('.')}\`: ` : ''
  throw new BadRequestError(`invalid request body: ${where}${issue.message}`)
}

const tokenCreate = z.object({ ttl: z.union([z.string().max(32), z.number()]).optional() }).strict()
const link = z.object({ token: z.string().max(100_000) }).strict()
const unlink = z.object({ host: z.string().min(1).max(256).optional(), force: z.boolean().optional() }).strict()
const settingsSet = z.object({ host: z.string().min(1).max(256), settings: z.record(z.string().max(64), z.string().max(1024)) }).strict()
const relinquish = z.object({ to: z.string().min(1).max(256).optional() }).strict()

/** Every `/api/v1` route. Handlers only translate HTTP to Agent calls. */
export function registerRoutes (app: FastifyInstance, agent: Agent): void {
  app.get('/api/v1/status', async () => agent.hostStatus())
  app.get('/api/v1/peers', async () => agent.peerList())
  app.get('/api/v1/hosts', async () => agent.hostsTable())
  app.get<{ Params: { host: string } }>('/api/v1/hosts/:host/status', async (req) => agent.hostState.statusOf(req.params.host))
  app.get('/api/v1/group/gossip', async () => ({ counters: agent.hostState.counters }))

  app.post('/api/v1/settings', async (req) => {
    const { host, settings } = body(settingsSet, req.body)
    return await agent.settings.set(host, settings)
  })
  app.get<{ Querystring: { host?: string } }>('/api/v1/settings', async (req) => {
    const host = typeof req.query.host === 'string' && req.query.host !== '' ? req.query.host : undefined
    return agent.settings.show(host)
  })

  app.post('/api/v1/tokens', async (req) => {
    const { ttl } = body(tokenCreate, req.body)
    let ms: number | undefined
    if (ttl != null) {
      ms = typeof ttl === 'number' ? ttl : parseDuration(ttl)
      if (ms === undefined) throw new BadRequestError(`invalid ttl ${JSON.stringify(ttl).slice(0, 40)}: expected a duration between 1s and ${formatDuration(agent.config.group.maxTokenTtl)}, such as 90s, 2m or 1h`, 'TOKEN_TTL_INVALID')
    }
    return await agent.group.createToken(ms)
  })
  app.get('/api/v1/tokens', async () => await agent.group.listTokens())
  app.delete<{ Params: { id: string } }>('/api/v1/tokens/:id', async (req) => await agent.group.revokeToken(req.params.id))

  app.post('/api/v1/link', async (req) => await agent.group.link(body(link, req.body).token))
  app.post('/api/v1/unlink', async (req) => {
    const { host, force } = body(unlink, req.body)
    return await agent.group.unlink(host, force === true)
  })
  app.post('/api/v1/leader/relinquish', async (req) => await agent.group.relinquish(body(relinquish, req.body).to))
}
