/**
 * The local API: fastify on a unix socket in the data dir (mode 0600), JSON under
 * `/api/v1`. A thin layer over the Agent; errors are `{ "error": { code, message } }`.
 * The Local UI's TCP listener is a second `listen` on the same routes (later issue).
 */
import { chmodSync, rmSync } from 'node:fs'
import Fastify, { type FastifyInstance, type FastifyError, type FastifyReply } from 'fastify'
import type { Agent } from '../agent/agent.js'
import type { Logger } from '../agent/logger.js'
import { EdgelinkError, errorMessage } from '../errors.js'
import { registerRoutes } from './routes.js'

/** Largest JSON body a route accepts; content uploads stream separately. */
export const MAX_JSON_BODY = 64 * 1024

export interface ErrorBody {
  error: { code: string, message: string }
}

export class ApiServer {
  private readonly agent: Agent
  private readonly socketPath: string
  private readonly log: Logger
  private app?: FastifyInstance

  constructor (agent: Agent, socketPath: string, log: Logger) {
    this.agent = agent
    this.socketPath = socketPath
    this.log = log
  }

  async start (): Promise<void> {
    if (this.app != null) return
    const app = buildApp(this.agent, this.log)
    // Only a running agent removes a socket, and it holds the data dir lock, so a socket here is stale.
    rmSync(this.socketPath, { force: true })
    // The data dir is 0700 (prepareDataDir), so nobody else can reach the socket in the
    // moment before the chmod. No umask here: it is process-wide, and would be held across
    // the await, so a directory another task made meanwhile would lose its search bit.
    await app.listen({ path: this.socketPath })
    chmodSync(this.socketPath, 0o600)
    this.app = app
  }

  async stop (): Promise<void> {
    const app = this.app
    if (app == null) return
    this.app = undefined
    await app.close()
    rmSync(this.socketPath, { force: true })
  }
}

/** The fastify app with every route, for the unix socket (and later the UI listener). */
export function buildApp (agent: Agent, log: Logger): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: MAX_JSON_BODY,
    return503OnClosing: true,
    // A HOST argument may be long garbage; let it reach the route and get UNKNOWN_HOST, not a router error.
    routerOptions: { maxParamLength: 16 * 1024 },
    // Errors fastify raises before routing (a bad URL escape, an unknown method) use our format too.
    frameworkErrors: (err, _req, reply) => {
      void (reply as unknown as FastifyReply).code(400).send(errorBody('BAD_REQUEST', `invalid request: ${err.message.slice(0, 200)}`))
    },
    // Errors below routing (oversized headers, an unknown method, garbage bytes): our format, then close.
    clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
      if (!socket.writable) { socket.destroy(); return }
      const tooLarge = err.code === 'HPE_HEADER_OVERFLOW'
      const body = JSON.stringify(errorBody(tooLarge ? 'HEADERS_TOO_LARGE' : 'BAD_REQUEST', tooLarge ? 'request headers are too large' : 'malformed HTTP request (unknown method or bad syntax)'))
      socket.end(`HTTP/1.1 ${tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request'}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
    }
  })
  app.setErrorHandler((err: FastifyError | EdgelinkError, req, reply) => {
    if (err instanceof EdgelinkError) {
      if (err.status >= 500) log.error({ err: err.message, code: err.code, url: req.url }, 'request failed')
      return reply.code(err.status).send(errorBody(err.code, err.message))
    }
    const fe = err as FastifyError
    if (fe.validation != null) {
      return reply.code(400).send(errorBody('BAD_REQUEST', `invalid request: ${fe.message}`))
    }
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      return reply.code(413).send(errorBody('BODY_TOO_LARGE', `request body is larger than ${MAX_JSON_BODY} bytes`))
    }
    if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      return reply.code(415).send(errorBody('UNSUPPORTED_MEDIA_TYPE', 'send the request body as application/json'))
    }
    if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
      return reply.code(fe.statusCode).send(errorBody('BAD_REQUEST', `invalid request: ${fe.message}`))
    }
    log.error({ err: errorMessage(err), url: req.url }, 'request failed')
    return reply.code(500).send(errorBody('INTERNAL', `internal error: ${errorMessage(err)}; see the agent log`))
  })

  app.setNotFoundHandler((req, reply) => {
    return reply.code(404).send(errorBody('NOT_FOUND', `no such API route: ${req.method} ${req.url.split('?')[0]}`))
  })

  registerRoutes(app, agent)
  return app
}

export function errorBody (code: string, message: string): ErrorBody {
  return { error: { code, message } }
}
