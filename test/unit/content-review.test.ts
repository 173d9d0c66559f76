/**
 * Regressions from a review of the content operator path (commit 074d656), on the
 * upload route of a real agent (leader of a group of one) over its unix socket:
 *
 * - a catalog full by the 32 KiB a catalog record may take (long names) refuses the next
 *   upload before its body (CATALOG_FULL, saying what to do), taking nothing into tmp/
 * - names with control or invisible format characters, or blank, are a 400; so is a
 *   repeated `name` or `kind` query parameter
 *
 * The CLI side is in test/cli/content-review.test.ts.
 */
import { readdirSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Agent } from '../../src/agent/agent.js'
import { MAX_CATALOG_ITEMS } from '../../src/content/catalog.js'
import { AgentSet } from '../helpers/agents.js'

interface RawResponse { status: number, body: Buffer, raw: string }

/**
 * One HTTP/1.1 request written by hand, read until the server closes the connection.
 * `headers` may announce a Content-Length other than the body's (a body not sent).
 */
async function rawRequest (socketPath: string, req: { method: string, path: string, headers?: Record<string, string>, body?: Uint8Array }, timeoutMs = 10_000): Promise<RawResponse> {
  const body = req.body ?? new Uint8Array()
  const headers: Record<string, string> = { host: 'localhost', connection: 'close', 'content-length': String(body.length), ...req.headers }
  const head = `${req.method} ${req.path} HTTP/1.1\r\n` + Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('') + '\r\n'
  const received = await new Promise<Buffer>((resolve, reject) => {
    const socket = connect(socketPath)
    const chunks: Buffer[] = []
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no answer within ${timeoutMs} ms to ${req.method} ${req.path.slice(0, 80)}`)) }, timeoutMs)
    socket.on('data', (c: Buffer) => chunks.push(c))
    // The server may answer and close before it has read the body: our write then fails, the answer stands.
    socket.on('error', () => {})
    socket.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(chunks)) })
    socket.write(head)
    if (body.length > 0) socket.write(body)
  })
  const split = received.indexOf('\r\n\r\n')
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(received.toString('latin1'))?.[1] ?? 0)
  return { status, body: split < 0 ? Buffer.alloc(0) : received.subarray(split + 4), raw: received.toString('latin1').slice(0, 600) }
}

function apiError (res: RawResponse): { code: string, message: string } {
  expect(res.status, res.raw).toBeGreaterThanOrEqual(400)
  return (JSON.parse(res.body.toString('utf8')) as { error: { code: string, message: string } }).error
}

async function upload (socket: string, query: string, bytes: string): Promise<RawResponse> {
  return await rawRequest(socket, { method: 'POST', path: `/api/v1/content?${query}`, headers: { 'content-type': 'application/octet-stream' }, body: Buffer.from(bytes) })
}

const agents = new AgentSet()
let leader: Agent
let socket: string

beforeAll(async () => {
  leader = await agents.start({ name: 'lead' })
  socket = leader.paths.apiSocket
  await leader.group.createToken()
  expect(leader.group.roster?.leader).toBe(leader.peerId)
})
afterAll(async () => { await agents.stopAll() })

describe('content upload route', () => {
  it('names with control or invisible format characters, or blank, are a 400 and nothing is added', async () => {
    const before = leader.content.list().map(i => i.digest)
    const names = ['two\nlines', 'esc\u001b[31mred', 'report\u202efdp.exe', 'zero\u200bwidth', 'tab\there', '   ']
    for (const [i, name] of names.entries()) {
      const res = await upload(socket, `name=${encodeURIComponent(name)}&kind=file`, `bad name ${i}`)
      expect(res.status, `${JSON.stringify(name)}: ${res.raw}`).toBe(400)
      const error = apiError(res)
      expect(error.code, JSON.stringify(name)).toBe('CONTENT_NAME_INVALID')
      expect(error.message).toMatch(name.trim() === '' ? /must not be blank/ : /control or invisible formatting characters/)
    }
    expect(leader.content.list().map(i => i.digest)).toEqual(before)
    // A good name still goes in.
    expect((await upload(socket, 'name=fine.bin&kind=file', 'fine')).status).toBe(201)
  })

  it('a repeated name or kind query parameter is a 400 naming it, and nothing is added', async () => {
    const before = leader.content.list().map(i => i.digest)
    for (const [query, key] of [['name=a.bin&name=b.bin&kind=file', 'name'], ['name=c.bin&kind=file&kind=provider-image', 'kind']] as const) {
      const res = await upload(socket, query, `repeated ${key}`)
      expect(res.status, res.raw).toBe(400)
      const error = apiError(res)
      expect(error.code).toBe('UPLOAD_QUERY_INVALID')
      expect(error.message).toBe(`give ${key} once (it appears 2 times)`)
    }
    expect(leader.content.list().map(i => i.digest)).toEqual(before)
  })

  it('a catalog full by its record size refuses the next upload before the body (CATALOG_FULL), and tmp/ stays empty', async () => {
    // 3-byte characters: each item's name takes 760 bytes of the 32 KiB record.
    const name = (i: number): string => `${String(i).padStart(3, '0')}-${'名'.repeat(250)}`
    let refused: unknown
    let i = 0
    for (; i < MAX_CATALOG_ITEMS; i++) {
      const bytes = Buffer.from(`catalog item ${i}`)
      try {
        await leader.content.add((async function * () { yield bytes })(), { name: name(i), kind: 'file', size: bytes.length })
      } catch (err) {
        refused = err
        break
      }
    }
    const listed = leader.content.list().length
    // Full by the record's size, long before the item limit.
    expect(refused, `all ${MAX_CATALOG_ITEMS} items went in`).toBeDefined()
    expect(listed).toBeLessThan(MAX_CATALOG_ITEMS / 2)

    // 64 MiB announced, not one byte sent: before the fix the agent waited for the body.
    const tmp = join(leader.paths.blobs, 'tmp')
    const res = await rawRequest(socket, {
      method: 'POST',
      path: `/api/v1/content?name=${encodeURIComponent(name(i + 1))}&kind=file`,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(64 * 1024 * 1024) }
    }, 5_000)
    expect(res.status, res.raw).toBe(409)
    const error = apiError(res)
    expect(error.code).toBe('CATALOG_FULL')
    expect(error.message).toMatch(/the catalog is full .*32 KiB.*remove items with `edgelink content rm`, or use a shorter name/)
    expect(readdirSync(tmp)).toEqual([])
    expect(leader.content.list()).toHaveLength(listed)
    // The add that found it full was refused the same way, before its bytes were stored.
    expect(refused).toMatchObject({ code: 'CATALOG_FULL', status: 409 })
    expect(leader.status).toBe('running')
  })
})
