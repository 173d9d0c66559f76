/**
 * src/net/rpc.ts between two real agents: frames up to the protocol's own limit pass,
 * whatever the stream reader's default buffer (4 MiB in @libp2p/utils), and a frame over
 * the limit is refused without harming the agent. The group pull answers up to 16 MiB
 * (every member's status in a group of 256), so a limit above 4 MiB must hold.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { peerIdFromString } from '@libp2p/peer-id'
import { AgentSet } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'
import { rpcCall, rpcHandler, type Codec } from '../../src/net/rpc.js'

const PROTOCOL = '/edgelink-test/rpc/1.0.0'
const LIMIT = 12 * 1024 * 1024
/** The frame is the value itself; it says how long an answer to send back. */
const raw: Codec<Uint8Array> = { encode: (v) => v, decode: (d) => d.subarray() }

describe('rpc frames', () => {
  const set = new AgentSet()
  let a: Agent
  let b: Agent
  let served = 0

  beforeAll(async () => {
    a = await set.start({ name: 'a' })
    b = await set.start({ name: 'b' })
    await b.node.handle(PROTOCOL, rpcHandler<Uint8Array, Uint8Array>({
      protocol: PROTOCOL,
      request: raw,
      response: raw,
      maxFrameBytes: LIMIT,
      timeoutMs: 30_000,
      malformed: Uint8Array.of(0xff),
      log: b.log,
      handle: async (_remote, req) => {
        served++
        const want = Buffer.from(req.subarray(0, 4)).readUInt32BE(0)
        return new Uint8Array(want).fill(req.length % 251)
      }
    }), { runOnLimitedConnection: false })
    await a.dial(b.node.getMultiaddrs()[0].toString())
  })
  afterAll(async () => { await set.stopAll() })

  const call = async (requestBytes: number, answerBytes: number): Promise<Uint8Array> => {
    const req = new Uint8Array(requestBytes)
    Buffer.from(req.buffer).writeUInt32BE(answerBytes, 0)
    return await rpcCall(a.node, peerIdFromString(b.peerId), PROTOCOL, req, { request: raw, response: raw }, { maxFrameBytes: LIMIT, timeoutMs: 30_000 })
  }

  it('a request and an answer of 10 MiB each (over the reader\'s 4 MiB default) pass whole', async () => {
    const res = await call(10 * 1024 * 1024, 10 * 1024 * 1024)
    expect(res.length).toBe(10 * 1024 * 1024)
    expect(res.every(x => x === (10 * 1024 * 1024) % 251)).toBe(true)
  })

  it('an answer over the limit fails the call; a request over it is refused unread; both agents keep serving', async () => {
    await expect(call(8, LIMIT + 1)).rejects.toThrow(/too long|overflow/i)
    const before = served
    const res = await call(LIMIT + 1, 4).catch((err: Error) => err)
    // The handler never ran: the malformed answer (or a reset) is all that comes back.
    expect(served).toBe(before)
    if (!(res instanceof Error)) expect([...res]).toEqual([0xff])
    expect((await call(8, 16)).length).toBe(16)
  })
})
