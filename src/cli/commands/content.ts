import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream, renameSync, rmSync, statSync } from 'node:fs'
import { request } from 'node:http'
import { basename, join } from 'node:path'
import type { Command } from 'commander'
import type { CatalogItemView } from '../../content/catalog.js'
import type { ContentItemView } from '../../content/service.js'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import type { ApiClient } from '../client.js'
import { CliError, EXIT_USAGE } from '../errors.js'
import { formatTable, printJson } from '../output.js'
import { printable } from '../../util/printable.js'
import { formatDuration } from '../../util/duration.js'
import { CONTENT_KINDS, contentNameProblem } from '../../content/names.js'

const KINDS: readonly string[] = CONTENT_KINDS

export function registerContent (program: Command): void {
  const content = program.command('content').description('files every linked host keeps (images, cluster definitions)')

  withCommon(content.command('add'))
    .description('upload FILE to the leader; every host then fetches it')
    .argument('<file>', 'the file to add')
    .option('--name <name>', 'name shown in `content ls` (default: the file name)')
    .option('--kind <kind>', `one of ${KINDS.join(', ')}`, 'file')
    .option('--wait', 'after the upload, show group-wide progress until every host has the file')
    .action(async (file: string, opts: CommonOptions & { name?: string, kind: string, wait?: boolean }) => {
      if (!KINDS.includes(opts.kind)) throw new CliError(`--kind must be one of ${KINDS.join(', ')}`, EXIT_USAGE)
      let size: number
      let before: ReturnType<typeof statSync>
      try {
        const st = statSync(file)
        if (!st.isFile()) throw new CliError(`${file} is not a regular file`)
        size = st.size
        before = st
      } catch (err) {
        if (err instanceof CliError) throw err
        throw new CliError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
      }
      const client = clientFor(opts)
      const name = opts.name ?? basename(file)
      const nameProblem = contentNameProblem(name)
      if (nameProblem != null) throw new CliError(`${nameProblem}${opts.name == null ? ' (the file\'s name is used; give another with --name)' : ''}`)
      // Asked first, not learnt from a refused upload: an agent that refuses before reading
      // the body closes the connection, and the client can lose its answer to EPIPE.
      const st = await client.get<{ role: string | null, leader: string | null }>('/api/v1/status')
      if (st.role === 'follower') throw new CliError(`only the leader (${st.leader ?? '?'}) can upload content; run this on the leader`)
      const item = await upload(client, file, size, name, opts.kind, opts.json !== true)
      const after = statSync(file, { throwIfNoEntry: false })
      if (after == null || after.size !== before?.size || after.mtimeMs !== before.mtimeMs) {
        process.stderr.write(`warning: ${file} changed while it was being uploaded; the group holds the ${size} bytes that were read (${item.digest}). If the file was still being written, remove that item and upload the file again\n`)
      }
      if (opts.wait === true) await waitAll(client, item.digest, opts.json !== true)
      if (opts.json === true) { printJson(opts.wait === true ? (await client.get<ContentItemView[]>('/api/v1/content')).find(i => i.digest === item.digest) : item); return }
      process.stdout.write(`${item.digest}  ${item.name} (${item.kind}, ${human(item.size)})\n`)
    })

  withCommon(content.command('ls'))
    .description('the catalog, with each host\'s state per item')
    .action(async (opts: CommonOptions) => {
      const items = await clientFor(opts).get<ContentItemView[]>('/api/v1/content')
      if (opts.json === true) { printJson(items); return }
      if (items.length === 0) { process.stdout.write('No content. Add a file on the leader with `edgelink content add FILE`.\n'); return }
      process.stdout.write(formatTable(['DIGEST', 'NAME', 'KIND', 'SIZE', 'HOSTS'],
        items.map(i => [i.digest.slice(0, 19) + '…', i.name, i.kind, human(i.size), i.hosts.map(h => `${h.hostname}: ${describe(h)}`).join(', ')])))
    })

  withCommon(content.command('rm'))
    .description('remove an item from the catalog (leader); every host deletes it')
    .argument('<digest>', 'sha256:<hex>, from `content ls --json`')
    .action(async (digest: string, opts: CommonOptions) => {
      const r = await clientFor(opts).delete<{ removed: string }>(`/api/v1/content/${encodeURIComponent(digest)}`)
      if (opts.json === true) { printJson(r); return }
      process.stdout.write(`Removed ${r.removed}; every host deletes it.\n`)
    })

  withCommon(content.command('get'))
    .description('copy a complete file out of this host\'s store')
    .argument('<digest>', 'sha256:<hex>')
    .requiredOption('--out <file>', 'where to write it')
    .action(async (digest: string, opts: CommonOptions & { out: string }) => {
      const client = clientFor(opts)
      const bytes = await download(client, digest, opts.out)
      if (opts.json === true) { printJson({ digest, out: opts.out, size: bytes }); return }
      process.stdout.write(`Wrote ${human(bytes)} to ${opts.out}\n`)
    })
}

function describe (h: ContentItemView['hosts'][number]): string {
  if (h.state === 'syncing') return `syncing ${h.percent}%`
  if (h.state === 'error') return `error: ${h.error ?? '?'}`
  return h.state
}

function human (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`
}

function notRunning (dataDir: string): CliError {
  return new CliError(`no edgelink agent is running for data dir ${dataDir}; start one with \`edgelink agent --data-dir ${dataDir}\``, 1, 'AGENT_NOT_RUNNING')
}

/** How long `content add` waits for the agent's answer once the whole file is sent (at least). */
const ANSWER_AFTER_UPLOAD_MS = 10 * 60_000

/** Stream the file to the agent; a progress bar with rate and ETA on a terminal. */
async function upload (client: ApiClient, file: string, size: number, name: string, kind: string, interactive: boolean): Promise<CatalogItemView> {
  const { socketPath, dataDir } = client
  const { SingleBar, Presets } = (await import('cli-progress')).default
  const bar = interactive && process.stderr.isTTY === true
    ? new SingleBar({ format: 'upload [{bar}] {percentage}% | {value}/{total} MiB | {rate} MiB/s | ETA {eta_formatted}', stream: process.stderr, hideCursor: true }, Presets.shades_classic)
    : undefined
  const mib = (b: number): number => Math.round(b / 1024 / 1024)
  bar?.start(mib(size), 0, { rate: '0' })
  const started = Date.now()
  return await new Promise<CatalogItemView>((resolve, reject) => {
    const req = request({
      socketPath,
      method: 'POST',
      path: `/api/v1/content?name=${encodeURIComponent(name)}&kind=${encodeURIComponent(kind)}`,
      headers: { 'content-type': 'application/octet-stream', 'content-length': size }
    }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => { if (chunks.length < 1024) chunks.push(c) })
      res.on('end', () => {
        bar?.stop()
        let body: unknown
        try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')) } catch { body = undefined }
        if ((res.statusCode ?? 500) >= 400) {
          // The agent refused without reading the rest: stop sending, or the open file keeps us alive.
          input.unpipe(req)
          input.destroy()
          req.destroy()
          reject(new CliError((body as { error?: { message?: string } } | undefined)?.error?.message ?? `upload failed: HTTP ${res.statusCode ?? '?'}`))
          return
        }
        resolve(body as CatalogItemView)
      })
    })
    // No byte taken for this long: the agent is stopped, hung or overloaded. Once the whole
    // file is sent the agent still flushes it to disk (one fsync, as long as the disk needs
    // for what the page cache holds), so the wait for its answer is longer and says so.
    const stalled = (): void => {
      bar?.stop()
      reject(new CliError(`upload failed: the agent took no bytes and said nothing for ${formatDuration(client.timeoutMs)} (${sent} of ${size} bytes sent); nothing was added. Check that it is running (not stopped or overloaded) and its log; EDGELINK_API_TIMEOUT sets how long to wait`))
      input.unpipe(req)
      input.destroy()
      req.destroy()
    }
    req.setTimeout(client.timeoutMs, stalled)
    req.on('finish', () => {
      const wait = Math.max(client.timeoutMs, ANSWER_AFTER_UPLOAD_MS)
      req.setTimeout(wait, () => {
        reject(new CliError(`the agent took all ${size} bytes but did not answer within ${formatDuration(wait)}; it may still be writing the file to disk. See \`edgelink content ls\` in a while, and the agent's log; EDGELINK_API_TIMEOUT sets how long to wait`))
        req.destroy()
      })
    })
    req.on('error', (err: NodeJS.ErrnoException) => {
      bar?.stop()
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') reject(notRunning(dataDir))
      else if (err.code === 'EPIPE' || err.code === 'ECONNRESET') reject(new CliError(`upload failed: the agent closed the upload before the whole file was sent (${err.code}); nothing was added. Its log says why; is this host the leader, and has its data dir space for the file?`))
      else reject(new CliError(`upload failed: ${err.code ?? err.message}`))
    })
    // Exactly the `size` bytes announced: a file still growing (being copied from a stick)
    // would otherwise send more than its Content-Length, a shrinking one fewer, forever.
    const input = createReadStream(file, { highWaterMark: 1024 * 1024, start: 0, end: Math.max(0, size - 1) })
    let sent = 0
    input.on('data', (c) => {
      sent += c.length
      bar?.update(mib(sent), { rate: (sent / 1024 / 1024 / Math.max(0.001, (Date.now() - started) / 1000)).toFixed(1) })
    })
    input.on('end', () => {
      if (sent >= size) return
      bar?.stop()
      input.unpipe(req)
      req.destroy()
      reject(new CliError(`${file} became shorter while it was being uploaded (${sent} of ${size} bytes read); nothing was added. Upload it again once it is complete`))
    })
    input.on('error', (err) => { req.destroy(err) })
    if (size === 0) { input.destroy(); req.end() } else input.pipe(req)
  })
}

/** Poll until every host has the item; a group-wide progress bar on a terminal. */
async function waitAll (client: ReturnType<typeof clientFor>, digest: string, interactive: boolean): Promise<void> {
  const { SingleBar, Presets } = (await import('cli-progress')).default
  const bar = interactive && process.stderr.isTTY === true
    ? new SingleBar({ format: 'group  [{bar}] {percentage}% | {complete}/{hosts} hosts complete', stream: process.stderr, hideCursor: true }, Presets.shades_classic)
    : undefined
  let started = false
  let said = ''
  for (;;) {
    const item = (await client.get<ContentItemView[]>('/api/v1/content')).find(i => i.digest === digest)
    if (item == null) throw new CliError(`${digest} left the catalog while waiting`)
    const total = item.hosts.reduce((a, h) => a + h.total, 0)
    const have = item.hosts.reduce((a, h) => a + (h.state === 'complete' ? h.total : h.have), 0)
    if (bar != null) {
      if (!started) { bar.start(total, have, { complete: item.complete, hosts: item.hosts.length }); started = true } else bar.update(have, { complete: item.complete, hosts: item.hosts.length })
    }
    if (item.complete === item.hosts.length) { bar?.stop(); return }
    // Keep waiting (errors are retried, disk space may appear, a host may come back), but
    // say what holds it up, once each time that changes: a host in error, or one not heard from.
    const liveness = new Map((await client.get<Array<{ peerId: string, liveness: string }>>('/api/v1/hosts')).map(h => [h.peerId, h.liveness]))
    const problems = item.hosts.flatMap(h => {
      if (h.state === 'complete') return []
      if (h.state === 'error') return [`${h.hostname}: ${h.error ?? 'error'}`]
      const l = liveness.get(h.peerId)
      return l === 'down' || l === 'suspect' ? [`${h.hostname}: ${l} (its agent is not answering; it fetches the file when it is back)`] : []
    }).join('; ')
    if (problems !== said) {
      said = problems
      if (problems !== '') {
        bar?.stop()
        process.stderr.write(`waiting: ${printable(problems)} (Ctrl-C stops waiting; the hosts go on)\n`)
        if (bar != null) started = false
      }
    }
    await new Promise(resolve => setTimeout(resolve, 500))
  }
}

/**
 * Copy a blob out: into a new temporary file beside `out` (created, never an existing file
 * or link followed), checked against the digest and the announced size, flushed to disk,
 * then renamed to `out`. On any failure, or Ctrl-C, the temporary file is removed.
 */
async function download (client: ApiClient, digest: string, out: string): Promise<number> {
  const existing = statSync(out, { throwIfNoEntry: false })
  if (existing?.isDirectory() === true) throw new CliError(`${out} is a directory; give the file to write, e.g. --out ${join(out, 'FILE')}`, EXIT_USAGE)
  if (out.endsWith('/')) throw new CliError(`${out} names a directory; give the file to write`, EXIT_USAGE)
  const tmp = `${out}.part-${process.pid}`
  const cleanup = (): void => { rmSync(tmp, { force: true }) }
  const onSignal = (signal: NodeJS.Signals): void => { cleanup(); process.exit(signal === 'SIGINT' ? 130 : 143) }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    return await fetchBlob(client, digest, out, tmp)
  } catch (err) {
    cleanup()
    throw err
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

async function fetchBlob (client: ApiClient, digest: string, out: string, tmp: string): Promise<number> {
  const { socketPath, dataDir } = client
  return await new Promise<number>((resolve, reject) => {
    let n = 0
    const req = request({ socketPath, method: 'GET', path: `/api/v1/content/${encodeURIComponent(digest)}/blob` }, res => {
      if ((res.statusCode ?? 500) >= 400) {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          let msg = `HTTP ${res.statusCode ?? '?'}`
          try { msg = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error: { message: string } }).error.message } catch {}
          reject(new CliError(msg))
        })
        return
      }
      const expected = Number(res.headers['content-length'])
      const file = createWriteStream(tmp, { mode: 0o644, flags: 'wx', flush: true })
      const hash = createHash('sha256')
      res.on('data', (c: Buffer) => { n += c.length; hash.update(c) })
      res.pipe(file)
      // 'close', not 'finish': with `flush` the data is on disk once the file is closed.
      file.on('close', () => {
        if (file.errored != null) return
        const got = `sha256:${hash.digest('hex')}`
        if (n !== expected || got !== digest) {
          reject(new CliError(`the copy of ${digest} does not match it (${n} of ${Number.isFinite(expected) ? expected : '?'} bytes, ${got}); nothing was written to ${out}. The agent's copy may be damaged: check its log`))
          return
        }
        try {
          renameSync(tmp, out)
          resolve(n)
        } catch (err) {
          reject(new CliError(`cannot write ${out}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`))
        }
      })
      file.on('error', (err: NodeJS.ErrnoException) => { res.destroy(); reject(new CliError(`cannot write ${out}: ${err.code ?? err.message}`)) })
      res.on('error', (err) => { file.destroy(); reject(new CliError(`download failed: ${err.message}`)) })
      res.on('aborted', () => { file.destroy(); reject(new CliError(`download failed: the agent stopped sending after ${n} bytes; nothing was written to ${out}`)) })
    })
    // No byte for this long, before the answer or in the middle of it: the agent is stopped,
    // hung or overloaded. Without this a stalled agent kept `content get` waiting for ever.
    req.setTimeout(client.timeoutMs, () => {
      reject(new CliError(`download failed: the agent sent nothing for ${formatDuration(client.timeoutMs)} (${n} bytes received); nothing was written to ${out}. Check that it is running (not stopped or overloaded) and its log; EDGELINK_API_TIMEOUT sets how long to wait`))
      req.destroy()
    })
    req.on('error', (err: NodeJS.ErrnoException) => {
      reject(err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? notRunning(dataDir) : new CliError(`download failed: ${err.code ?? err.message}`))
    })
    req.end()
  })
}
