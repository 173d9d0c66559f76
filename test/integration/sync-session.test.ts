/**
 * The fetching side of /edgelink/sync/1.0.0 against a serving peer whose answers the test
 * controls: real libp2p nodes (two agents), the real syncHandler on one of them with a
 * SyncServer stub in place of its blob store.
 */
import { randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AgentSet } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'
import { MAX_CHUNK_SIZE } from '../../src/content/manifest.js'
import { SYNC_PROTOCOL, SyncSession, syncHandler, type SyncServer } from '../../src/content/sync-protocol.js'

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

  it('a body of the wrong length is refused before it is read, and the session ends', async () => {
    chunks = [randomBytes(4096)]
    const session = await open()
    await expect(session.chunk('sha256:x', 0, 4095)).rejects.toThrow(/4096 bytes, expected 4095/)
    expect(session.usable).toBe(false)
  })
})
