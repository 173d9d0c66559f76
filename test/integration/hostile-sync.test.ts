/**
 * A hostile peer speaks `/edgelink/sync/1.0.0` with garbage: random bytes, oversized
 * and endless length prefixes, well-formed `SyncRequest`s with bad types, digests and
 * chunk indexes (out of range, past 32 bits). It does so as a member of the group (the
 * server answers it) and as a host outside the group (the server only refuses).
 *
 * The leader must answer each request with the right status (or reset the stream
 * after a malformed frame), never serve bytes that are not the file's, never hang,
 * crash or store anything, and keep serving: afterwards a legitimate new follower
 * still syncs the file.
 */
import { createHash, randomBytes } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import fc from 'fast-check'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Stream } from '@libp2p/interface'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AgentSet } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'
import { MAX_SYNC_FRAME, MAX_SYNC_REQUEST, SYNC_PROTOCOL, SyncRequestType, SyncStatus } from '../../src/content/sync-protocol.js'
import { SyncRequest, SyncResponse } from '../../src/wire/sync.js'
import { waitFor } from '../helpers/wait.js'

const FAST = {
  group: { reconnectInterval: 200, antiEntropyInterval: 500, dialTimeout: 5000, rpcTimeout: 5000, joinTimeout: 5000 },
  status: { interval: 1000, probeInterval: 200, suspectAfter: 800, downAfter: 1600, antiEntropyInterval: 500 }
}
const MiB = 1024 * 1024
/** 4 chunks, the last one short. */
const FILE_SIZE = 3 * MiB + 100
const CHUNKS = 4
/** A server that does not answer within this long is hanging. */
const ANSWER_MS = 5_000

async function until (fn: () => boolean | Promise<boolean>, timeout = 30_000): Promise<void> {
  await waitFor(fn, { timeout, interval: 50 })
}

async function * chunksOf (data: Buffer, size = 256 * 1024): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size)
}

function sha (data: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex')
}

// ---- a hand-made protobuf encoder: any type and index, including values no valid encoder writes ----

function varint (v: bigint): number[] {
  const out: number[] = []
  let x = v
  do {
    let b = Number(x & 0x7fn)
    x >>= 7n
    if (x > 0n) b |= 0x80
    out.push(b)
  } while (x > 0n)
  return out
}

interface RawRequest { type: bigint, digest: string, index: bigint }

function encodeRequest (r: RawRequest): Uint8Array {
  const digest = Buffer.from(r.digest, 'utf8')
  return Uint8Array.from([0x08, ...varint(r.type), 0x12, ...varint(BigInt(digest.length)), ...digest, 0x18, ...varint(r.index)])
}

/** A length prefix (unsigned varint) and the frame. */
function lengthPrefixed (frame: Uint8Array): Uint8Array {
  return Uint8Array.from([...varint(BigInt(frame.length)), ...frame])
}

// ---- reading whatever the server sends back -------------------------------------------

interface Answer { res: SyncResponse, frame?: Uint8Array }
interface Exchange {
  answers: Answer[]
  /** How the stream ended: EOF, reset by the server, or nothing within ANSWER_MS (a hang). */
  end: 'eof' | 'reset' | 'timeout' | 'error'
  error?: string
}

/**
 * Open a sync stream from `from` to `to`, send `bytes` as they are (the caller frames
 * them or not), half-close, and read answers until the stream ends. A chunk answer
 * (SYNC_OK with a length) is followed by its frame.
 */
async function exchange (from: Agent, to: Agent, bytes: Uint8Array[]): Promise<Exchange> {
  let stream: Stream
  try {
    stream = await from.node.dialProtocol(peerIdFromString(to.peerId), SYNC_PROTOCOL, { signal: AbortSignal.timeout(ANSWER_MS) })
  } catch (err) {
    return { answers: [], end: 'error', error: `cannot open a stream: ${(err as Error).message}` }
  }
  const lp = lpStream(stream, { maxDataLength: MAX_SYNC_FRAME })
  const answers: Answer[] = []
  let end: Exchange['end'] = 'eof'
  let error: string | undefined
  let closing: Promise<void> | undefined
  try {
    for (const b of bytes) {
      if (!stream.send(b)) await new Promise<void>((resolve) => { stream.addEventListener('drain', () => { resolve() }, { once: true }) })
    }
    closing = stream.close().catch(() => {})
    for (;;) {
      const res = SyncResponse.decode(await lp.read({ signal: AbortSignal.timeout(ANSWER_MS) }))
      const answer: Answer = { res }
      answers.push(answer)
      if (res.status === SyncStatus.SYNC_OK && res.length > 0) {
        answer.frame = (await lp.read({ signal: AbortSignal.timeout(ANSWER_MS) })).subarray()
      }
    }
  } catch (err) {
    const name = (err as Error).name
    if (name === 'UnexpectedEOFError') end = 'eof'
    else if (name === 'StreamResetError' || name === 'StreamAbortedError' || name === 'StreamStateError' || name === 'StreamClosedError') end = 'reset'
    else if (name === 'TimeoutError' || name === 'AbortError') end = 'timeout'
    else { end = 'error'; error = `${name}: ${(err as Error).message}` }
  } finally {
    stream.abort(new Error('hostile peer done'))
    await closing
  }
  return { answers, end, ...(error != null ? { error } : {}) }
}

function describeExchange (x: Exchange): string {
  return JSON.stringify({ end: x.end, error: x.error, answers: x.answers.map(a => ({ status: a.res.status, message: a.res.message, length: a.res.length, frame: a.frame?.length })) })
}

describe('a hostile peer on the sync protocol', () => {
  const set = new AgentSet()
  let leader: Agent
  let member: Agent
  let outsider: Agent
  let data: Buffer
  let digest = ''
  /** What the leader holds and lists before the hostile traffic, to check nothing changes. */
  let before = ''

  function chunkAt (index: number): Buffer {
    return data.subarray(index * MiB, Math.min(FILE_SIZE, (index + 1) * MiB))
  }

  /** The leader's catalog, index and blob directories: must not change under hostile traffic. */
  function snapshot (a: Agent): string {
    const dirs = Object.fromEntries(['sha256', 'partial', 'tmp'].map(d => [d, readdirSync(join(a.paths.blobs, d)).sort()]))
    return JSON.stringify({
      catalog: a.content.list().map(i => ({ digest: i.digest, name: i.name, size: i.size, manifest: i.manifestDigest })),
      blobs: a.content.blobs.list(),
      dirs
    })
  }

  beforeAll(async () => {
    leader = await set.start({ name: 'lead', config: FAST })
    member = await set.start({ name: 'member', config: FAST })
    outsider = await set.start({ name: 'outsider', config: FAST })
    await member.group.link((await leader.group.createToken()).token)
    data = randomBytes(FILE_SIZE)
    const item = await leader.content.add(chunksOf(data), { name: 'img', kind: 'file', size: data.length })
    digest = item.digest
    expect(digest).toBe(sha(data))
    await until(() => member.content.blobs.has(digest))
    await outsider.dial(leader.node.getMultiaddrs()[0].toString())
    before = snapshot(leader)
  })
  afterAll(async () => { await set.stopAll() })

  /** The leader is up, lists and holds the same as before, and has served the outsider nothing. */
  function expectUnharmed (): void {
    expect(leader.status).toBe('running')
    expect(snapshot(leader)).toBe(before)
    expect(leader.content.traffic.served.get(outsider.peerId)).toBeUndefined()
    expect(outsider.content.list()).toEqual([])
    expect(outsider.content.blobs.list()).toEqual([])
  }

  it('the fixture: a member is answered, an outsider refused', async () => {
    const ok = await exchange(member, leader, [lengthPrefixed(SyncRequest.encode({ type: SyncRequestType.GET_CHUNK, digest, index: 3 }))])
    expect(ok.end, describeExchange(ok)).toBe('eof')
    expect(ok.answers).toHaveLength(1)
    expect(ok.answers[0].res.status).toBe(SyncStatus.SYNC_OK)
    expect(Buffer.from(ok.answers[0].frame ?? []).equals(chunkAt(3))).toBe(true)
    const no = await exchange(outsider, leader, [lengthPrefixed(SyncRequest.encode({ type: SyncRequestType.GET_CHUNK, digest, index: 0 }))])
    expect(no.answers.map(a => a.res.status), describeExchange(no)).toEqual([SyncStatus.SYNC_NOT_MEMBER])
    expect(no.end).not.toBe('timeout')
  })

  it('random bytes, framed or not, from a member or an outsider: refusals only, never a hang', async () => {
    await fc.assert(fc.asyncProperty(
      fc.array(fc.uint8Array({ minLength: 0, maxLength: 1500 }), { minLength: 1, maxLength: 4 }),
      fc.boolean(),
      fc.boolean(),
      async (frames, framed, asMember) => {
        const x = await exchange(asMember ? member : outsider, leader, frames.map(f => framed ? lengthPrefixed(f) : f))
        const what = describeExchange(x)
        expect(x.end, what).not.toBe('timeout')
        expect(x.end, what).not.toBe('error')
        if (!asMember) {
          expect(x.answers.map(a => a.res.status), what).toEqual([SyncStatus.SYNC_NOT_MEMBER])
          return
        }
        // The real digest cannot appear in random bytes: nothing is found, nothing is served.
        for (const a of x.answers) expect([SyncStatus.SYNC_NOT_FOUND, SyncStatus.SYNC_INVALID], what).toContain(a.res.status)
      }
    ), { numRuns: 60 })
    expectUnharmed()
  })

  it('oversized and endless length prefixes: SYNC_INVALID or a reset, nothing read into memory', async () => {
    await fc.assert(fc.asyncProperty(
      fc.oneof(
        // One byte over the request limit, up to lengths no frame could have.
        fc.bigInt({ min: BigInt(MAX_SYNC_REQUEST + 1), max: 2n ** 63n }).map(n => Uint8Array.from(varint(n))),
        fc.constant(Uint8Array.from(varint(BigInt(MAX_SYNC_FRAME)))),
        // A varint that never ends.
        fc.integer({ min: 9, max: 64 }).map(n => new Uint8Array(n).fill(0xff))
      ),
      fc.uint8Array({ maxLength: 2048 }),
      fc.boolean(),
      async (prefix, tail, asMember) => {
        const x = await exchange(asMember ? member : outsider, leader, [prefix, tail])
        const what = describeExchange(x)
        expect(x.end, what).not.toBe('timeout')
        expect(x.end, what).not.toBe('error')
        const statuses = x.answers.map(a => a.res.status)
        if (asMember) expect([[], [SyncStatus.SYNC_INVALID]], what).toContainEqual(statuses)
        else expect(statuses, what).toEqual([SyncStatus.SYNC_NOT_MEMBER])
      }
    ), { numRuns: 40 })
    expectUnharmed()
  })

  it('well-formed requests with bad types, digests and indexes get the right answer, and only the file\'s bytes', async () => {
    const realDigest = (): string => digest
    const hex64 = fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: 64, maxLength: 64 })
    const digestArb = fc.oneof(
      { weight: 4, arbitrary: fc.constant(null).map(realDigest) },
      fc.constant(null).map(() => digest.toUpperCase()),
      fc.constant(null).map(() => digest.slice(0, -1)),
      fc.constant(null).map(() => digest + '0'),
      fc.constant(null).map(() => digest.replace('sha256:', 'sha512:')),
      hex64.map(h => 'sha256:' + h),
      hex64,
      fc.constant('sha256:../../../../etc/passwd'),
      fc.constant(''),
      fc.string({ maxLength: 80 }),
      fc.string({ unit: 'binary', maxLength: 40 }),
      // Requests over the 1 KiB request limit.
      fc.string({ minLength: MAX_SYNC_REQUEST, maxLength: 3 * MAX_SYNC_REQUEST })
    )
    const typeArb = fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(1n, 2n, 3n) },
      fc.constant(0n),
      fc.bigInt({ min: 4n, max: 2n ** 31n - 1n }),
      fc.bigInt({ min: 2n ** 32n, max: 2n ** 64n - 1n })
    )
    const indexArb = fc.oneof(
      { weight: 4, arbitrary: fc.bigInt({ min: 0n, max: BigInt(CHUNKS - 1) }) },
      fc.bigInt({ min: BigInt(CHUNKS), max: BigInt(CHUNKS + 2) }),
      fc.constantFrom(2n ** 31n - 1n, 2n ** 31n, 2n ** 32n - 1n),
      fc.bigInt({ min: 2n ** 32n, max: 2n ** 64n - 1n })
    )
    const requestArb = fc.record({ type: typeArb, digest: digestArb, index: indexArb })
    const manifest = leader.content.blobs.manifestBytes(digest)
    expect(manifest).toBeDefined()
    const fullBitmap = Uint8Array.from([0x0f])

    /** The answer the protocol requires, or 'lenient' for values past 32 bits (decoders differ), or 'abort' for a malformed frame. */
    function expected (r: RawRequest): SyncStatus | 'lenient' | 'abort' {
      if (encodeRequest(r).length > MAX_SYNC_REQUEST) return 'abort'
      if (r.type >= 2n ** 32n || r.index >= 2n ** 32n) return 'lenient'
      if (r.type > 3n) return 'abort' // not a SyncRequestType: the request does not decode
      if (r.type === 0n) return SyncStatus.SYNC_INVALID
      if (r.digest !== digest) return SyncStatus.SYNC_NOT_FOUND
      if (r.type === 3n && r.index >= BigInt(CHUNKS)) return SyncStatus.SYNC_NOT_FOUND
      return SyncStatus.SYNC_OK
    }

    /** An OK answer carries exactly what the leader holds for what was asked. */
    function checkOk (r: RawRequest, a: Answer, what: string): void {
      const type = Number(BigInt.asUintN(32, r.type))
      const index = Number(BigInt.asUintN(32, r.index))
      expect(r.digest, what).toBe(digest)
      if (type === 1) expect(Buffer.from(a.res.manifest).equals(Buffer.from(manifest ?? [])), what).toBe(true)
      else if (type === 2) expect(Buffer.from(a.res.bitmap).equals(fullBitmap), what).toBe(true)
      else {
        expect(type, what).toBe(3)
        expect(index, what).toBeLessThan(CHUNKS)
        expect(a.res.length, what).toBe(chunkAt(index).length)
        expect(Buffer.from(a.frame ?? []).equals(chunkAt(index)), what).toBe(true)
      }
    }

    await fc.assert(fc.asyncProperty(fc.array(requestArb, { minLength: 1, maxLength: 6 }), fc.boolean(), async (reqs, asMember) => {
      const x = await exchange(asMember ? member : outsider, leader, reqs.map(r => lengthPrefixed(encodeRequest(r))))
      const what = describeExchange(x) + ' for ' + JSON.stringify(reqs, (_k, v: unknown) => typeof v === 'bigint' ? v.toString() : v)
      expect(x.end, what).not.toBe('timeout')
      expect(x.end, what).not.toBe('error')
      if (!asMember) {
        expect(x.answers.map(a => a.res.status), what).toEqual([SyncStatus.SYNC_NOT_MEMBER])
        return
      }
      for (const [i, r] of reqs.entries()) {
        const want = expected(r)
        const a = x.answers[i]
        if (want === 'abort' || (want === 'lenient' && a == null)) {
          // SYNC_INVALID, then the stream ends (the answer may be lost in the reset).
          if (a != null) expect(a.res.status, what).toBe(SyncStatus.SYNC_INVALID)
          expect(x.answers.length, what).toBeLessThanOrEqual(i + 1)
          return
        }
        // Past 32 bits the request may not decode (SYNC_INVALID, then the stream ends) or decode truncated.
        if (want === 'lenient' && a.res.status === SyncStatus.SYNC_INVALID) {
          if (x.answers.length === i + 1) return
          continue
        }
        expect(a, `no answer to request ${i}: ${what}`).toBeDefined()
        if (want === 'lenient') {
          expect([SyncStatus.SYNC_OK, SyncStatus.SYNC_NOT_FOUND], what).toContain(a.res.status)
        } else {
          expect(a.res.status, `request ${i}: ${what}`).toBe(want)
        }
        if (a.res.status === SyncStatus.SYNC_OK) checkOk(r, a, `request ${i}: ${what}`)
        else expect(a.frame, what).toBeUndefined()
      }
      // Every request answered, then the server closed the stream after our end of input.
      expect(x.answers.length, what).toBe(reqs.length)
      expect(x.end, what).toBe('eof')
    }), { numRuns: 120 })
    expectUnharmed()
  })

  it('a malformed request after a chunk request: the chunk still arrives whole, then SYNC_INVALID and the end', async () => {
    // The server used to reset the stream at the malformed request, dropping the part of the
    // chunk still waiting for the window: lost in most of 150 tries.
    for (let i = 0; i < 30; i++) {
      const reqs = [
        { type: 3n, digest, index: BigInt(i % CHUNKS) },
        { type: 2n, digest: ' '.repeat(MAX_SYNC_REQUEST + 1), index: 0n },
        { type: 1n, digest, index: 0n }
      ]
      const x = await exchange(member, leader, reqs.map(r => lengthPrefixed(encodeRequest(r))))
      const what = describeExchange(x)
      expect(x.answers[0]?.res.status, what).toBe(SyncStatus.SYNC_OK)
      expect(Buffer.from(x.answers[0]?.frame ?? []).equals(chunkAt(i % CHUNKS)), what).toBe(true)
      expect(x.answers.slice(1).map(a => a.res.status), what).toEqual([SyncStatus.SYNC_INVALID])
      expect(x.end, what).toBe('eof')
    }
    expectUnharmed()
  })

  it('a flood of idle streams is bounded, and the member is still served afterwards', async () => {
    // Far more streams than the server accepts from one peer; each says nothing.
    const opened = await Promise.allSettled(Array.from({ length: 48 }, async () =>
      await member.node.dialProtocol(peerIdFromString(leader.peerId), SYNC_PROTOCOL, { signal: AbortSignal.timeout(ANSWER_MS) })))
    const streams = opened.filter((o): o is PromiseFulfilledResult<Stream> => o.status === 'fulfilled').map(o => o.value)
    // Give the leader a moment to refuse the ones over its limit, without sleeping blind: poll for resets.
    await until(() => streams.filter(s => s.status === 'open').length <= 32 || streams.length <= 32, 5_000).catch(() => {})
    const stillOpen = streams.filter(s => s.status === 'open').length
    for (const s of streams) s.abort(new Error('flood done'))
    expect(stillOpen).toBeLessThanOrEqual(32)
    expect(leader.status).toBe('running')
    // Once the flood's streams are gone, the member is served again.
    await until(async () => {
      const x = await exchange(member, leader, [lengthPrefixed(SyncRequest.encode({ type: SyncRequestType.GET_HAVE, digest, index: 0 }))])
      return x.answers[0]?.res.status === SyncStatus.SYNC_OK
    }, 10_000)
    expectUnharmed()
  })

  it('after all that, a legitimate new follower still syncs the file', async () => {
    const newcomer = await set.start({ name: 'newcomer', config: FAST })
    await newcomer.group.link((await leader.group.createToken()).token)
    await until(() => newcomer.content.blobs.has(digest))
    expect(sha(readFileSync(newcomer.content.blobs.path(digest)))).toBe(digest)
    expect(leader.status).toBe('running')
    expect(member.status).toBe('running')
    // The member, fuzzed as a client the whole time, still holds the right bytes too.
    expect(sha(readFileSync(member.content.blobs.path(digest)))).toBe(digest)
    await until(() => leader.content.list()[0]?.complete === 3, 20_000)
    expect(snapshot(leader)).toBe(before)
  })
})
