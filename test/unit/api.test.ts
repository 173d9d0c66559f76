/**
 * The local API's error contract, on a real agent over its unix socket: every answer
 * that is not a success is `{"error":{"code","message"}}` JSON, whatever is sent.
 */
import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import type { Agent } from '../../src/agent/agent.js'
import { MAX_JSON_BODY } from '../../src/api/server.js'
import { AgentSet } from '../helpers/agents.js'

interface RawResponse {
  status: number
  headers: Record<string, string>
  body: Buffer
  /** The whole answer as received, for failure messages. */
  raw: string
}

interface RawRequest {
  method: string
  path: string
  headers?: Record<string, string>
  body?: Uint8Array
}

/**
 * One HTTP/1.1 request written by hand (so any method, path or body can be sent, with
 * an exact Content-Length), read until the server closes the connection.
 */
async function rawRequest (socketPath: string, req: RawRequest, timeoutMs = 10_000): Promise<RawResponse> {
  const body = req.body ?? new Uint8Array()
  const headers: Record<string, string> = { host: 'localhost', connection: 'close', ...req.headers }
  if (body.length > 0) headers['content-length'] = String(body.length)
  const head = `${req.method} ${req.path} HTTP/1.1\r\n` + Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('') + '\r\n'
  const received = await new Promise<Buffer>((resolve, reject) => {
    const socket = connect(socketPath)
    const chunks: Buffer[] = []
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no answer within ${timeoutMs} ms to ${req.method} ${req.path}`)) }, timeoutMs)
    socket.on('data', (c: Buffer) => chunks.push(c))
    // The server may answer (413) and close before it has read a large body: our write then fails, the answer stands.
    socket.on('error', () => {})
    socket.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(chunks)) })
    // No half-close: node's HTTP server drops a request whose client ends its side before the answer is ready.
    // `connection: close` makes the server close once it has answered.
    socket.write(head)
    socket.write(body)
  })
  const split = received.indexOf('\r\n\r\n')
  const headText = (split < 0 ? received : received.subarray(0, split)).toString('latin1')
  const [statusLine, ...headerLines] = headText.split('\r\n')
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0)
  const resHeaders: Record<string, string> = {}
  for (const line of headerLines) {
    const i = line.indexOf(':')
    if (i > 0) resHeaders[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim()
  }
  return { status, headers: resHeaders, body: split < 0 ? Buffer.alloc(0) : received.subarray(split + 4), raw: received.toString('latin1').slice(0, 500) }
}

/** Assert `res` is an API error: JSON `{"error":{"code":string,"message":string}}` with a 4xx/5xx status. */
function expectApiError (res: RawResponse): { code: string, message: string } {
  expect(res.status, res.raw).toBeGreaterThanOrEqual(400)
  expect(res.headers['content-type'], res.raw).toMatch(/^application\/json/)
  let parsed: unknown
  expect(() => { parsed = JSON.parse(res.body.toString('utf8')) }, res.raw).not.toThrow()
  const error = (parsed as { error?: { code?: unknown, message?: unknown } }).error
  expect(typeof error?.code, res.raw).toBe('string')
  expect(typeof error?.message, res.raw).toBe('string')
  expect((error?.message as string).length, res.raw).toBeGreaterThan(0)
  return error as { code: string, message: string }
}

const agents = new AgentSet()
let agent: Agent
let socket: string

beforeAll(async () => {
  agent = await agents.start({ name: 'api' })
  socket = agent.paths.apiSocket
})
afterAll(async () => { await agents.stopAll() })

async function expectStillAnswering (): Promise<void> {
  const res = await rawRequest(socket, { method: 'GET', path: '/api/v1/status' })
  expect(res.status, res.raw).toBe(200)
  expect((JSON.parse(res.body.toString('utf8')) as { peerId: string }).peerId).toBe(agent.peerId)
}

describe('local API error format', () => {
  it('GET /api/v1/status answers 200 with this host\'s PeerId', async () => {
    await expectStillAnswering()
  })

  it('an unknown route is 404 {error:{code:"NOT_FOUND", message}} naming the method and path', async () => {
    const res = await rawRequest(socket, { method: 'GET', path: '/api/v1/nope?x=1' })
    expect(res.status).toBe(404)
    const error = expectApiError(res)
    expect(error.code).toBe('NOT_FOUND')
    expect(error.message).toContain('GET /api/v1/nope')
  })

  it('a body larger than the limit is 413 BODY_TOO_LARGE', async () => {
    const res = await rawRequest(socket, {
      method: 'POST',
      path: '/api/v1/status',
      headers: { 'content-type': 'application/json' },
      body: Buffer.from(JSON.stringify({ pad: 'x'.repeat(MAX_JSON_BODY) }))
    })
    expect(res.status).toBe(413)
    expect(expectApiError(res).code).toBe('BODY_TOO_LARGE')
    await expectStillAnswering()
  })

  it('a field whose "length" is not a number (zod\'s length checks threw on it) is 400 naming the field, on every route that takes text', async () => {
    // Found by the random-values property below: {"token":{"length":{"toString":""}}} was a 500.
    const cases: Array<[string, Record<string, unknown>, string]> = [
      ['/api/v1/link', { token: { length: { toString: '' } } }, '`token`'],
      ['/api/v1/unlink', { host: { length: { valueOf: 1, toString: [] } } }, '`host`'],
      ['/api/v1/leader/relinquish', { to: { length: { toString: {} } } }, '`to`'],
      ['/api/v1/settings', { host: 'h', settings: { a: { length: { toString: '' } } } }, '`settings.a`'],
      ['/api/v1/link', { length: { toString: '' } }, 'invalid request body']
    ]
    for (const [path, fields, named] of cases) {
      const res = await rawRequest(socket, { method: 'POST', path, headers: { 'content-type': 'application/json' }, body: Buffer.from(JSON.stringify(fields)) })
      expect(res.status, res.raw).toBe(400)
      const error = expectApiError(res)
      expect(error.message).toContain(named)
      expect(error.message).toMatch(/"length" that is not a number/)
    }
    await expectStillAnswering()
  })

  it('invalid JSON is 400 BAD_REQUEST', async () => {
    const res = await rawRequest(socket, { method: 'POST', path: '/api/v1/x', headers: { 'content-type': 'application/json' }, body: Buffer.from('{"a":') })
    expect(res.status).toBe(400)
    expect(expectApiError(res).code).toBe('BAD_REQUEST')
  })

  it('a JSON body with a __proto__ key is refused with 400, not merged', async () => {
    const res = await rawRequest(socket, { method: 'POST', path: '/api/v1/x', headers: { 'content-type': 'application/json' }, body: Buffer.from('{"__proto__":{"polluted":1}}') })
    expect(res.status).toBe(400)
    expectApiError(res)
    expect(({} as Record<string, unknown>).polluted).toBeUndefined()
  })

  it('a body of an unsupported content type gets an API error (415, or 404 on an unknown route)', async () => {
    const res = await rawRequest(socket, { method: 'PUT', path: '/api/v1/x', headers: { 'content-type': 'text/x-bogus' }, body: Buffer.from('hello') })
    expect([404, 415]).toContain(res.status)
    expectApiError(res)
  })

  it('a malformed percent-escape in the path gets an error in the API format', async () => {
    const res = await rawRequest(socket, { method: 'GET', path: '/api/v1/%zz' })
    expect(res.status).toBe(400)
    expectApiError(res)
  })

  it('an HTTP method the server does not know gets an error in the API format', async () => {
    const res = await rawRequest(socket, { method: 'BREW', path: '/api/v1/status' })
    expect(res.status).toBe(400)
    expectApiError(res)
    await expectStillAnswering()
  })

  it('request headers over the size limit get an error in the API format', async () => {
    const res = await rawRequest(socket, { method: 'GET', path: '/api/v1/status', headers: { 'x-pad': 'p'.repeat(20_000) } })
    expect(res.status).toBe(431)
    expectApiError(res)
  })

  it('random methods, paths, bodies and content types always get JSON: a success body on a route, an API error otherwise, never an internal error; the agent keeps answering', async () => {
    const method = fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD') },
      { weight: 1, arbitrary: fc.constantFrom('PROPFIND', 'MKCOL', 'SEARCH', 'QUERY', 'LOCK', 'TRACE', 'PURGE') },
      // CONNECT asks for a tunnel, not a route: node's server hangs up on it by design.
      { weight: 1, arbitrary: fc.stringMatching(/^[A-Z]{1,10}$/).filter(m => m !== 'CONNECT') }
    )
    const segment = fc.oneof(
      fc.constantFrom('api', 'v1', 'status', 'peers', 'hosts', 'tokens', 'link', '..', '.', '', '%zz', '%', '%00', '%2F', '%E2%82%AC'),
      fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,;=:@-]{0,12}$/)
    )
    const path = fc.oneof(
      fc.constantFrom('/api/v1/status', '/api/v1/peers', '/api/v1/hosts', '/api/v1/tokens', '/api/v1/tokens/abc', '/api/v1/link',
        '/api/v1/unlink', '/api/v1/leader/relinquish', '/', '/api/v1/', '*'),
      fc.array(segment, { maxLength: 5 }).map(s => '/' + s.join('/')),
      fc.tuple(fc.constantFrom('/api/v1/status', '/api/v1/peers', '/x'), fc.stringMatching(/^[A-Za-z0-9=&%._-]{0,20}$/)).map(([p, q]) => `${p}?${q}`)
    )
    const contentType = fc.option(fc.oneof(
      fc.constantFrom('application/json', 'application/json; charset=utf-8', 'application/json; charset=utf-16', 'text/plain',
        'application/octet-stream', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencoded', ''),
      fc.stringMatching(/^[\x20-\x7e]{0,40}$/)
    ), { nil: undefined })
    const body = fc.option(fc.oneof(
      fc.jsonValue({ maxDepth: 3 }).map(v => Buffer.from(JSON.stringify(v) ?? 'null')),
      fc.string({ maxLength: 200 }).map(s => Buffer.from(s)),
      fc.uint8Array({ maxLength: 200 }),
      fc.integer({ min: MAX_JSON_BODY + 1, max: 4 * MAX_JSON_BODY }).map(n => Buffer.alloc(n, 0x61))
    ), { nil: undefined })

    await fc.assert(fc.asyncProperty(method, path, contentType, body, async (m, p, ct, b) => {
      const headers: Record<string, string> = ct === undefined ? {} : { 'content-type': ct }
      const res = await rawRequest(socket, { method: m, path: p, headers, body: b })
      expect(res.status, res.raw).not.toBe(0)
      // Garbage from a client is never the agent's fault.
      expect(res.status, res.raw).not.toBe(500)
      if (res.status >= 200 && res.status < 300) {
        // Only API routes succeed; what they answer is JSON.
        expect(p.startsWith('/api/v1/'), res.raw).toBe(true)
        if (m !== 'HEAD' && res.body.length > 0) expect(() => JSON.parse(res.body.toString('utf8')), res.raw).not.toThrow()
        return
      }
      if (m === 'HEAD') {
        // No body on HEAD; only the status can be checked.
        expect(res.status, res.raw).toBeGreaterThanOrEqual(400)
        return
      }
      expectApiError(res)
    }), { numRuns: 400 })

    await expectStillAnswering()
    expect(agent.status).toBe('running')
  })

  it('JSON bodies with random field values on every POST route get a success or a 4xx API error, never an internal error', async () => {
    const route = fc.constantFrom('/api/v1/tokens', '/api/v1/link', '/api/v1/unlink', '/api/v1/leader/relinquish')
    const field = fc.constantFrom('ttl', 'token', 'host', 'force', 'to', 'x', '__proto__')
    const value = fc.oneof(
      fc.jsonValue({ maxDepth: 2 }),
      fc.constantFrom('2m', '0s', '-1s', '99999999999d', 'el1_garbage', '', true, 0, -1, 1e308, Number.MAX_SAFE_INTEGER)
    )
    await fc.assert(fc.asyncProperty(route, fc.dictionary(field, value, { maxKeys: 3 }), async (r, fields) => {
      const res = await rawRequest(socket, { method: 'POST', path: r, headers: { 'content-type': 'application/json' }, body: Buffer.from(JSON.stringify(fields)) })
      expect(res.status, res.raw).not.toBe(0)
      expect(res.status, res.raw).toBeLessThan(500)
      if (res.status >= 400) expectApiError(res)
      else expect(() => JSON.parse(res.body.toString('utf8')), res.raw).not.toThrow()
    }), { numRuns: 200 })
    await expectStillAnswering()
  })
})

/**
 * The group gossip routes (`GET /api/v1/hosts/:host/status`, `GET /api/v1/settings?host=`,
 * `POST /api/v1/settings`) fed garbage, on the idle agent above and on the leader of a
 * group of one (so host lookups and settings changes run for real): a success or a 4xx
 * API error whose message does not echo unbounded input, never an internal error; the
 * agents keep answering, and only accepted settings changes are stored.
 */
describe('group gossip routes under garbage', () => {
  let leader: Agent
  let leaderSocket: string

  beforeAll(async () => {
    leader = await agents.start({ name: 'lead' })
    leaderSocket = leader.paths.apiSocket
    await leader.group.createToken()
    expect(leader.group.roster?.leader).toBe(leader.peerId)
  })

  /** A 2xx answer is JSON; anything else is a 4xx API error (with a bounded message unless `bounded` is false). */
  function expectAnswer (res: RawResponse, bounded = true): 'ok' | 'error' {
    expect(res.status, res.raw).not.toBe(0)
    expect(res.status, res.raw).toBeLessThan(500)
    if (res.status >= 200 && res.status < 300) {
      expect(() => JSON.parse(res.body.toString('utf8')), res.raw).not.toThrow()
      return 'ok'
    }
    const error = expectApiError(res)
    // A host name is quoted cut short (80 characters); the message never echoes a whole long input.
    if (bounded) expect(error.message.length, res.raw).toBeLessThan(400)
    return 'error'
  }

  const text = fc.oneof(
    fc.constantFrom('', ' ', '.', '..', '/', '%', '%00', '\u0000', 'null', 'undefined', '__proto__', 'constructor', 'toString',
      'h1', 'lead', 'api', '12D3KooW', '12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'Qm' + 'z'.repeat(44)),
    fc.string({ maxLength: 40 }),
    fc.string({ unit: 'grapheme', maxLength: 20 }),
    fc.integer({ min: 100, max: 3000 }).map(n => 'x'.repeat(n))
  )

  it('GET /api/v1/hosts/<garbage>/status answers a status or 404/400, never 500', async () => {
    const segment = fc.oneof(
      text.map(encodeURIComponent),
      fc.constantFrom('%zz', '%', '%E2%82', '%C0%AF', '..%2F..%2Fetc', '%2e%2e', 'a%20b', ';', '*', '~'),
      fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,;=:@-]{0,30}$/)
    )
    await fc.assert(fc.asyncProperty(fc.constantFrom(socket, leaderSocket), segment, async (sock, seg) => {
      const res = await rawRequest(sock, { method: 'GET', path: `/api/v1/hosts/${seg}/status` })
      // Message length is pinned by the next test.
      if (expectAnswer(res, false) === 'ok') {
        // Only this host itself (by hostname or PeerId) has a status without a group of others.
        const s = JSON.parse(res.body.toString('utf8')) as { peerId: string }
        expect([agent.peerId, leader.peerId], res.raw).toContain(s.peerId)
      } else {
        expect([400, 404], res.raw).toContain(res.status)
      }
    }), { numRuns: 300 })
    for (const [sock, self] of [[socket, agent], [leaderSocket, leader]] as const) {
      for (const host of [self.peerId, self.config.hostname]) {
        const res = await rawRequest(sock, { method: 'GET', path: `/api/v1/hosts/${encodeURIComponent(host)}/status` })
        expect(res.status, res.raw).toBe(200)
        expect(JSON.parse(res.body.toString('utf8'))).toMatchObject({ peerId: self.peerId, liveness: 'alive' })
      }
    }
    await expectStillAnswering()
  })

  it('GET /api/v1/hosts/<long name>/status is UNKNOWN_HOST with the name cut short, like a short one (no router detail)', async () => {
    for (const sock of [socket, leaderSocket]) {
      for (const n of [60, 101, 150, 1000, 5000]) {
        const res = await rawRequest(sock, { method: 'GET', path: `/api/v1/hosts/${'n'.repeat(n)}/status` })
        expect(res.status, res.raw).toBe(404)
        const error = expectApiError(res)
        expect(error.code, res.raw).toBe('UNKNOWN_HOST')
        expect(error.message.length, res.raw).toBeLessThan(300)
        expect(error.message, res.raw).not.toContain('/api/v1')
      }
    }
  })

  it('GET /api/v1/settings with a garbage query answers a view or a 4xx API error, never 500', async () => {
    const query = fc.oneof(
      text.map(t => `host=${encodeURIComponent(t)}`),
      fc.stringMatching(/^[A-Za-z0-9=&%[\]._-]{0,40}$/),
      fc.constantFrom('host', 'host=', 'host=%zz', 'host[]=a', 'host[a]=b', 'host=a&host=b', 'host.x=1', '__proto__[host]=x', 'host=%00')
    )
    await fc.assert(fc.asyncProperty(fc.constantFrom(socket, leaderSocket), query, async (sock, q) => {
      const res = await rawRequest(sock, { method: 'GET', path: `/api/v1/settings?${q}` })
      if (expectAnswer(res) === 'ok') {
        const v = JSON.parse(res.body.toString('utf8')) as { peerId: string, state: { state: string } }
        expect([agent.peerId, leader.peerId], res.raw).toContain(v.peerId)
        expect(['none', 'pending', 'applied', 'failed'], res.raw).toContain(v.state.state)
      }
    }), { numRuns: 200 })
    await expectStillAnswering()
  })

  it('POST /api/v1/settings with garbage bodies: only well-formed changes for a known host are stored, one version each', async () => {
    const before = leader.settings.show().version
    const key = fc.oneof(
      fc.constantFrom('ntp.server', 'tz', 'a', '_x', 'bad key', '', '1abc', '-x', 'k'.repeat(64), 'k'.repeat(65), 'constructor', 'toString', 'a/b', 'é'),
      fc.string({ maxLength: 70 })
    )
    const value = fc.oneof(
      { weight: 4, arbitrary: fc.string({ maxLength: 30 }) },
      { weight: 1, arbitrary: fc.constantFrom('v'.repeat(1024), 'v'.repeat(1025)) },
      { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 1 }) }
    )
    const settings = fc.oneof(
      { weight: 4, arbitrary: fc.dictionary(key, value, { maxKeys: 4 }) },
      { weight: 1, arbitrary: fc.integer({ min: 60, max: 80 }).map(n => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, 'v']))) },
      { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) }
    )
    const host = fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom(leader.peerId, leader.config.hostname) },
      { weight: 3, arbitrary: text },
      { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 1 }) }
    )
    const extra = fc.option(fc.dictionary(fc.constantFrom('x', 'force', 'version', 'target'), fc.jsonValue({ maxDepth: 1 }), { minKeys: 1, maxKeys: 2 }), { nil: undefined, freq: 2 })
    const wellFormed = fc.record({
      host: fc.constantFrom(leader.peerId, leader.config.hostname),
      settings: fc.dictionary(fc.stringMatching(/^[a-z_][a-z0-9_.-]{0,10}$/), fc.string({ maxLength: 20 }), { minKeys: 1, maxKeys: 4 })
    }).map(v => Buffer.from(JSON.stringify(v)))
    const body = fc.oneof(
      { weight: 2, arbitrary: wellFormed },
      { weight: 6, arbitrary: fc.tuple(fc.option(host, { nil: undefined }), fc.option(settings, { nil: undefined }), extra).map(([h, s, x]) => Buffer.from(JSON.stringify({ ...x, host: h, settings: s }))) },
      { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map(v => Buffer.from(JSON.stringify(v) ?? 'null')) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 100 }) }
    )
    let stored = 0
    await fc.assert(fc.asyncProperty(fc.constantFrom(socket, leaderSocket), body, async (sock, b) => {
      const res = await rawRequest(sock, { method: 'POST', path: '/api/v1/settings', headers: { 'content-type': 'application/json' }, body: b })
      if (expectAnswer(res) === 'ok') {
        // Only the leader changes settings, and only for a member (here: itself).
        expect(sock, res.raw).toBe(leaderSocket)
        const v = JSON.parse(res.body.toString('utf8')) as { peerId: string, version: number }
        expect(v.peerId, res.raw).toBe(leader.peerId)
        stored++
        expect(v.version, res.raw).toBe(before + stored)
      }
    }), { numRuns: 300 })
    // Some random changes were well formed, and each one stored exactly one version.
    expect(stored).toBeGreaterThan(0)
    expect(leader.settings.show().version).toBe(before + stored)
    expect(agent.settings.show().version).toBe(0)
    await expectStillAnswering()
    const res = await rawRequest(leaderSocket, { method: 'GET', path: '/api/v1/status' })
    expect(res.status, res.raw).toBe(200)
    expect(leader.status).toBe('running')
  })

  it('GET /api/v1/group/gossip answers counters on both agents', async () => {
    for (const sock of [socket, leaderSocket]) {
      const res = await rawRequest(sock, { method: 'GET', path: '/api/v1/group/gossip' })
      expect(res.status, res.raw).toBe(200)
      expect(JSON.parse(res.body.toString('utf8'))).toHaveProperty('counters')
    }
  })
})
