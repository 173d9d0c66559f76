/**
 * Debug REPL served on a unix socket in the data dir (mode 0600). `edgelink repl`
 * attaches to it. The context holds the agent, the libp2p node and helpers; leaving
 * the REPL closes the connection only, never the agent.
 *
 * Wire: the client sends one JSON line `{"terminal":bool,"columns":n}` first, then raw
 * input. With `terminal: true` the REPL uses line editing and tab completion.
 */
import { chmodSync, rmSync } from 'node:fs'
import { createServer, type Server, type Socket } from 'node:net'
import { start as startRepl, type REPLServer } from 'node:repl'
import { inspect } from 'node:util'
import type { Agent } from '../agent/agent.js'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'

/** Longest handshake line accepted; anything longer is not our client. */
const MAX_HANDSHAKE = 1024

interface Helper {
  usage: string
  fn: (...args: never[]) => unknown
}

export class ReplServer {
  private readonly agent: Agent
  private readonly socketPath: string
  private readonly log: Logger
  private server?: Server
  private readonly sessions = new Set<Socket>()

  constructor (agent: Agent, socketPath: string, log: Logger) {
    this.agent = agent
    this.socketPath = socketPath
    this.log = log
  }

  async start (): Promise<void> {
    if (this.server != null) return
    rmSync(this.socketPath, { force: true })
    const server = createServer(socket => { this.accept(socket) })
    // Private by the data dir's 0700, as the API socket (src/api/server.ts): no umask.
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.socketPath, () => { server.off('error', reject); resolve() })
    })
    chmodSync(this.socketPath, 0o600)
    this.server = server
  }

  async stop (): Promise<void> {
    const server = this.server
    if (server == null) return
    this.server = undefined
    for (const s of this.sessions) s.destroy()
    await new Promise<void>(resolve => server.close(() => { resolve() }))
    rmSync(this.socketPath, { force: true })
  }

  /** Helpers available in the REPL context, with the usage line `.help` prints. */
  helpers (): Record<string, Helper> {
    const agent = this.agent
    return {
      status: { usage: 'status()            this host: peerId, hostname, addresses, group fields', fn: () => agent.hostStatus() },
      peers: { usage: 'peers()             agents seen on the LAN or connected', fn: () => agent.peerList() },
      ping: { usage: 'await ping(peer)    round-trip ms to a PeerId or multiaddr', fn: async (peer: string) => await agent.ping(peer) },
      dial: { usage: 'await dial(addr)    dial a multiaddr ending in /p2p/<PeerId>', fn: async (addr: string) => await agent.dial(addr) }
    }
  }

  private accept (socket: Socket): void {
    this.sessions.add(socket)
    socket.on('close', () => { this.sessions.delete(socket) })
    socket.on('error', err => { this.log.debug({ err: errorMessage(err) }, 'repl connection error') })
    let buffered = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk])
      const nl = buffered.indexOf(0x0a)
      if (nl < 0) {
        if (buffered.length > MAX_HANDSHAKE) socket.destroy()
        return
      }
      socket.off('data', onData)
      let hello: { terminal?: unknown, columns?: unknown } = {}
      try {
        const parsed: unknown = JSON.parse(buffered.subarray(0, nl).toString('utf8'))
        // `null`, a number, a string or an array parse too: only an object is a handshake.
        if (parsed == null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object')
        hello = parsed as typeof hello
      } catch {
        socket.end('edgelink repl: bad handshake; attach with `edgelink repl`\n')
        return
      }
      const rest = buffered.subarray(nl + 1)
      socket.pause()
      this.startSession(socket, hello.terminal === true, typeof hello.columns === 'number' ? hello.columns : 80)
      if (rest.length > 0) socket.unshift(rest)
      socket.resume()
    }
    socket.on('data', onData)
  }

  private startSession (socket: Socket, terminal: boolean, columns: number): void {
    // The REPL asks its output for the terminal width when it lays out completions.
    Object.assign(socket, { columns, isTTY: terminal })
    const helpers = this.helpers()
    const r: REPLServer = startRepl({
      prompt: 'edgelink> ',
      input: socket,
      output: socket,
      terminal,
      useGlobal: false,
      ignoreUndefined: true,
      writer: (v: unknown) => inspect(v, { colors: terminal, depth: 6 })
    })
    r.context.agent = this.agent
    r.context.node = this.agent.node
    for (const [name, h] of Object.entries(helpers)) r.context[name] = h.fn
    r.defineCommand('help', {
      help: 'List helpers and commands',
      action: () => {
        r.output.write('Context: agent (the Agent), node (the libp2p node)\nHelpers:\n')
        for (const h of Object.values(helpers)) r.output.write(`  ${h.usage}\n`)
        r.output.write('Commands:\n')
        for (const [name, cmd] of Object.entries(r.commands)) r.output.write(`  .${name.padEnd(10)} ${cmd?.help ?? ''}\n`)
        r.output.write('Leaving the REPL (.exit or Ctrl-D) leaves the agent running.\n')
        r.displayPrompt()
      }
    })
    r.on('exit', () => { socket.end() })
    socket.on('close', () => { r.close() })
    this.log.info('repl session attached')
  }
}
