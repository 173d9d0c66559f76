import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import { safeParse } from '../util/parse.js'
import type { Agent } from '../agent/agent.js'
import { BadRequestError, EdgelinkError } from '../errors.js'
import { formatDuration, parseDuration } from '../util/duration.js'

/** Parse a request body with a zod schema; a mismatch is a 400 naming the field. */
function body<T> (schema: z.ZodType<T>, value: unknown): T {
  const r = safeParse(schema, value ?? {})
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

/**
 * An upload body as an async iterable that fails if fewer bytes arrive than the
 * Content-Length announced (a client that gave up half way): the blob store then
 * discards the partial file and lists nothing.
 */
async function * uploadBody (raw: IncomingMessage, announced: number | undefined): AsyncGenerator<Uint8Array> {
  let received = 0
  for await (const chunk of raw) {
    received += (chunk as Buffer).length
    yield chunk as Buffer
  }
  if (announced != null && received !== announced) throw new BadRequestError(`upload interrupted: received ${received} of ${announced} bytes; nothing was added`, 'UPLOAD_INTERRUPTED')
}

/** Every `/api/v1` route. Handlers only translate HTTP to Agent calls. */
export function registerRoutes (app: FastifyInstance, agent: Agent): void {
  // Uploads stream straight into the blob store: never buffered, so never limited by bodyLimit.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => { done(null, payload) })

  app.get('/api/v1/content', async () => agent.content.list())
  app.get('/api/v1/content/traffic', async () => {
    const t = agent.content.traffic
    return { served: Object.fromEntries(t.served), received: Object.fromEntries(t.received), faults: Object.fromEntries(t.faults) }
  })
  // Uploads still arriving when the API closes (the agent stops): aborted, so that a stalled
  // or suspended client cannot hold up the stop (fastify's close waits for open requests).
  const uploads = new Set<{ ctl: AbortController, raw: IncomingMessage }>()
  app.addHook('preClose', async () => {
    for (const u of uploads) { u.ctl.abort(); u.raw.socket?.destroy() }
  })
  app.post<{ Querystring: { name?: string | string[], kind?: string | string[] } }>('/api/v1/content', async (req, reply) => {
    if (req.headers['content-type'] !== 'application/octet-stream') throw new BadRequestError('send the file as application/octet-stream', 'UPLOAD_CONTENT_TYPE')
    for (const key of ['name', 'kind'] as const) {
      if (Array.isArray(req.query[key])) throw new BadRequestError(`give ${key} once (it appears ${req.query[key].length} times)`, 'UPLOAD_QUERY_INVALID')
    }
    const announced = req.headers['content-length'] != null ? Number(req.headers['content-length']) : undefined
    const name = typeof req.query.name === 'string' ? req.query.name : ''
    const kind = typeof req.query.kind === 'string' && req.query.kind !== '' ? req.query.kind : 'file'
    const ctl = new AbortController()
    const upload = { ctl, raw: req.raw }
    uploads.add(upload)
    req.raw.on('close', () => { uploads.delete(upload); if (!req.raw.complete) ctl.abort() })
    try {
      const item = await agent.content.add(uploadBody(req.body as IncomingMessage, announced), { name, kind, size: announced, signal: ctl.signal })
      return await reply.code(201).send(item)
    } catch (err) {
      // Refused before the body was read: close the connection so the client stops sending.
      if (!req.raw.complete) void reply.header('connection', 'close')
      throw err
    }
  })
  app.delete<{ Params: { digest: string } }>('/api/v1/content/:digest', async (req) => await agent.content.remove(req.params.digest))
  app.get<{ Params: { digest: string } }>('/api/v1/content/:digest/blob', async (req, reply) => {
    const { path, size } = agent.content.pathOf(req.params.digest)
    // A file that is not the size its manifest says would end the response short of its
    // Content-Length, and the client would wait for the rest: say so instead.
    const onDisk = (await stat(path).catch(() => undefined))?.size
    if (onDisk !== size) throw new EdgelinkError(`the stored file of ${req.params.digest} is ${onDisk ?? 'missing'}${onDisk != null ? ' bytes' : ''}, not ${size} bytes: it is damaged. Restart this agent: it drops damaged files when it starts and fetches them again from the other hosts (if no other host has it, add the file again on the leader)`, 'BLOB_DAMAGED', 500)
    return await reply.header('content-type', 'application/octet-stream').header('content-length', size).send(createReadStream(path))
  })

  app.get('/api/v1/status', async () => agent.hostStatus())
  app.get('/api/v1/peers', async () => agent.peerList())
  app.get('/api/v1/hosts', async () => agent.hostsTable())
  app.get<{ Params: { host: string } }>('/api/v1/hosts/:host/status', async (req) => agent.hostState.statusOf(req.params.host))
  app.get('/api/v1/group/gossip', async () => ({ counters: agent.hostState.counters }))
  registerEvents(app, agent)

  app.post('/api/v1/settings', async (req) => {
    const { host, settings } = body(settingsSet, req.body)
    return await agent.settings.set(host, settings)
  })
  app.get<{ Querystring: { host?: string | string[] } }>('/api/v1/settings', async (req) => {
    // Absent means this host; given, it must name one (an empty or repeated value is not
    // quietly taken as "this host": a script's empty $HOST would show the wrong one).
    const q = req.query.host
    if (Array.isArray(q)) throw new BadRequestError(`give host once (it appears ${q.length} times)`, 'SETTINGS_QUERY_INVALID')
    if (q === '') throw new BadRequestError('host is empty; give a PeerId or hostname (see `edgelink hosts`), or leave it out for this host', 'UNKNOWN_HOST')
    return agent.settings.show(q)
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

/** Events a slow reader may miss before its stream is ended (it then reconnects). */
const MAX_EVENTS_BEHIND = 1000

/**
 * `GET /api/v1/events`: one JSON object per line as things happen (AgentEvent in
 * src/status/events.ts), starting with `{"type":"hello"}`. A reader that stops reading
 * is not buffered for: events are dropped while its socket is full (a `dropped` line
 * says how many once it drains), and the stream ends after MAX_EVENTS_BEHIND drops.
 */
function registerEvents (app: FastifyInstance, agent: Agent): void {
  const open = new Set<ServerResponse>()
  // preClose: the server waits for open connections before onClose hooks would run.
  app.addHook('preClose', async () => { for (const res of open) res.end() })
  app.get('/api/v1/events', (req, reply) => {
    const hub = agent.hostState.events
    void reply.hijack()
    const res = reply.raw
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' })
    open.add(res)
    let dropped = 0
    let full = false
    const line = (e: unknown): boolean => res.write(JSON.stringify(e) + '\n')
    const off = hub.on((e) => {
      if (full) {
        if (++dropped >= MAX_EVENTS_BEHIND) res.end()
        return
      }
      if (!line(e)) {
        full = true
        res.once('drain', () => {
          full = false
          if (dropped > 0) { line({ type: 'dropped', count: dropped }); dropped = 0 }
        })
      }
    })
    const done = (): void => { off(); open.delete(res) }
    res.on('close', done)
    req.raw.on('close', done)
    line({ type: 'hello', at: new Date().toISOString(), peerId: agent.peerId })
  })
}
