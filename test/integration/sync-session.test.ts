/**
 * The fetching side of /edgelink/sync/1.0.0 against a serving peer whose answers the test
 * controls: real libp2p nodes (two agents), the real syncHandler on one of them with a
 * SyncServer stub in place of its blob store.
 */
import { randomBytes } from 'node:crypto'
import fc from 'fast-check'
import { peerIdFromString } from '@libp2p/peer-id'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AgentSet } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'
import { MAX_CHUNK_SIZE } from '../../src/content/manifest.js'
import { SYNC_PROTOCOL, SyncRefusedError, SyncSession, syncHandler, type SyncServer } from '../../src/content/sync-protocol.js'
import { SyncResponse, SyncStatus } from '../../src/wire/sync.js'

describe('a sync session (the fetcher\'s stream)', () => {
  const set = new AgentSet()
  let fetcher: Agent
  let server: Agent
  /** What the stub serves: chunk i of any digest is chunks[i]. */
  let chunks: Uint8Array[] = []

  beforeAll(async () => {
    fetcher = await set.start({ name: 'fetcher' })
    server = await set.start({ name: 'server' })
    const stub: SyncServer = {
      authorize: () => true,
      manifest: () => undefined,
      bitmap: () => undefined,
      fetching: () => undefined,
      chunk: async (_digest, index) => chunks[index],
      claim: () => true,
      unclaim: () => {},
      served: () => {}
    }
    await server.node.unhandle(SYNC_PROTOCOL)
    await server.node.handle(SYNC_PROTOCOL, syncHandler(stub, pino({ level: 'silent' })))
    await fetcher.node.dial(server.node.getMultiaddrs())
  })
  afterAll(async () => { await set.stopAll() })

  async function open (): Promise<SyncSession> {
    return await SyncSession.open(fetcher.node, peerIdFromString(server.peerId), 20_000)
  }

  it('receives chunks of every allowed size whole, one after another on one stream, larger than the read buffer included', async () => {
    // 16 MiB: four times the stream reader's 4 MiB buffer. Read as one frame, it overflowed it.
    chunks = [1, 64 * 1024, 1024 * 1024 + 17, 8 * 1024 * 1024, MAX_CHUNK_SIZE].map(n => randomBytes(n))
    const session = await open()
    try {
      for (const [i, want] of chunks.entries()) {
        const got = await session.chunk('sha256:x', i, want.byteLength)
        expect(Buffer.compare(got, want), `chunk ${i} (${want.byteLength} bytes)`).toBe(0)
      }
    } finally {
      session.close()
    }
  })

  it('a chunk is valid until the next one: the session reuses its buffer', async () => {
    chunks = [randomBytes(300_000), randomBytes(200_000)]
    const session = await open()
    try {
      const first = await session.chunk('sha256:x', 0, 300_000)
      expect(Buffer.compare(first, chunks[0])).toBe(0)
      const second = await session.chunk('sha256:x', 1, 200_000)
      expect(Buffer.compare(second, chunks[1])).toBe(0)
      expect(second.buffer).toBe(first.buffer)
    } finally {
      session.close()
    }
  })

  it('garbage answers (random bytes, endless or huge length prefixes) end the session with an error, never a hang or a wrong-sized chunk', async () => {
    const GARBAGE = '/edgelink/test/garbage/1.0.0'
    let answer = new Uint8Array()
    await server.node.handle(GARBAGE, async (stream) => {
      stream.send(answer)
      await stream.close().catch(() => {})
    })
    const ok = SyncResponse.encode({ status: SyncStatus.SYNC_OK, message: '', manifest: new Uint8Array(), bitmap: new Uint8Array(), length: 1000, fetching: new Uint8Array() } as unknown as SyncResponse)
    const header = Uint8Array.from([ok.byteLength, ...ok])
    const answers = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.constant(Uint8Array.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x01])), // a length prefix that never ends
      fc.constant(Uint8Array.from([0xff, 0xff, 0xff, 0x7f])), // 256 MiB
      fc.uint8Array({ maxLength: 300 }).map(tail => Uint8Array.from([...header, ...tail])) // a good header, then garbage
    )
    try {
      await fc.assert(fc.asyncProperty(answers, async (bytes) => {
        answer = bytes
        const stream = await fetcher.node.dialProtocol(peerIdFromString(server.peerId), GARBAGE)
        const session = SyncSession.over(server.peerId, stream, 3000)
        const t0 = Date.now()
        const result = await session.chunk('sha256:x', 0, 1000).then(c => c, (err: Error) => err)
        expect(Date.now() - t0).toBeLessThan(3000)
        // A refusal the bytes happen to decode to (BUSY, NOT_FOUND...) keeps the stream, as a real one does;
        // anything else that is not a whole chunk ends it.
        if (result instanceof SyncRefusedError) expect(result.status).not.toBe(SyncStatus.SYNC_OK)
        else if (result instanceof Error) expect(session.usable).toBe(false)
        else expect(result.byteLength).toBe(1000)
        session.close()
      }), { numRuns: 40 })
    } finally {
      await server.node.unhandle(GARBAGE)
    }
    // Both agents keep serving: a real chunk still arrives.
    chunks = [randomBytes(5000)]
    const session = await open()
    expect(Buffer.compare(await session.chunk('sha256:x', 0, 5000), chunks[0])).toBe(0)
    session.close()
  })

  it('a body of the wrong length is refused before it is read, and the session ends', async () => {
    chunks = [randomBytes(4096)]
    const session = await open()
    await expect(session.chunk('sha256:x', 0, 4095)).rejects.toThrow(/4096 bytes, expected 4095/)
    expect(session.usable).toBe(false)
  })
})
