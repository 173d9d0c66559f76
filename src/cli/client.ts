/**
 * The CLI's only way to the agent: JSON over the API's unix socket.
 */
import { request } from 'node:http'
import { dataDirPaths } from '../agent/datadir.js'
import { CliError, EXIT_USAGE } from './errors.js'
import { parseDuration } from '../util/duration.js'

/**
 * How long a plain API call may take, and how long an upload or download may go without a
 * byte either way, before the CLI gives up and says so. `EDGELINK_API_TIMEOUT` (a duration)
 * changes it.
 */
export const DEFAULT_API_TIMEOUT_MS = 30_000

/** The timeout from `EDGELINK_API_TIMEOUT` (a duration, 1s to 1d), or undefined if unset. */
export function envTimeoutMs (env: NodeJS.ProcessEnv = process.env): number | undefined {
  const raw = env.EDGELINK_API_TIMEOUT
  if (raw == null || raw === '') return undefined
  const ms = parseDuration(raw)
  if (ms == null || ms < 1000 || ms > 86_400_000) {
    throw new CliError(`EDGELINK_API_TIMEOUT must be a duration from 1s to 1d, such as 30s or 5m; got "${raw.slice(0, 40)}"`, EXIT_USAGE, 'BAD_ENV')
  }
  return ms
}
/** Largest API response the CLI reads; a larger one is not from our agent. */
const MAX_RESPONSE = 32 * 1024 * 1024

export interface ApiClientOptions {
  dataDir: string
  timeoutMs?: number
}

export class ApiClient {
  readonly dataDir: string
  readonly socketPath: string
  readonly timeoutMs: number

  constructor (opts: ApiClientOptions) {
    this.dataDir = opts.dataDir
    this.socketPath = dataDirPaths(opts.dataDir).apiSocket
    this.timeoutMs = opts.timeoutMs ?? envTimeoutMs() ?? DEFAULT_API_TIMEOUT_MS
  }

  async get<T> (path: string): Promise<T> {
    return await this.call<T>('GET', path)
  }

  async post<T> (path: string, body?: unknown): Promise<T> {
    return await this.call<T>('POST', path, body ?? {})
  }

  async delete<T> (path: string, body?: unknown): Promise<T> {
    return await this.call<T>('DELETE', path, body)
  }

  async call<T> (method: string, path: string, body?: unknown, timeoutMs = this.timeoutMs): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    return await new Promise<T>((resolve, reject) => {
      const req = request({
        socketPath: this.socketPath,
        method,
        path,
        headers: payload == null ? {} : { 'content-type': 'application/json', 'content-length': payload.length },
        timeout: timeoutMs
      }, res => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (c: Buffer) => {
          size += c.length
          if (size > MAX_RESPONSE) { req.destroy(new CliError(`the agent's answer to ${method} ${path} is larger than ${MAX_RESPONSE} bytes`)); return }
          chunks.push(c)
        })
        res.on('error', reject)
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let parsed: unknown
          try {
            parsed = text === '' ? undefined : JSON.parse(text)
          } catch {
            reject(new CliError(`the agent answered ${method} ${path} with something that is not JSON (HTTP ${res.statusCode ?? '?'})`))
            return
          }
          if ((res.statusCode ?? 500) >= 400) {
            const e = (parsed as { error?: { code?: string, message?: string } } | undefined)?.error
            reject(new CliError(e?.message ?? `the agent answered HTTP ${res.statusCode ?? '?'}`, 1, e?.code))
            return
          }
          resolve(parsed as T)
        })
      })
      req.on('timeout', () => { req.destroy(new CliError(`the agent did not answer ${method} ${path} within ${Math.round(timeoutMs / 1000)} s; check its log`)) })
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err instanceof CliError) { reject(err); return }
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new CliError(`no edgelink agent is running for data dir ${this.dataDir}; start one with \`edgelink agent --data-dir ${this.dataDir}\``, 1, 'AGENT_NOT_RUNNING'))
          return
        }
        if (err.code === 'EACCES') {
          reject(new CliError(`permission denied on ${this.socketPath}; run the command as the user that runs the agent`, 1, 'PERMISSION_DENIED'))
          return
        }
        reject(new CliError(`cannot reach the agent at ${this.socketPath}: ${err.code ?? err.message}`))
      })
      if (payload != null) req.write(payload)
      req.end()
    })
  }
}
