import { mkdirSync, statSync, chmodSync } from 'node:fs'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { EdgelinkError } from '../errors.js'

/** Longest unix socket path the kernel accepts (sun_path is 108 bytes including the NUL). */
const MAX_SOCKET_PATH = 107

/** Every file the agent keeps in its data dir. */
export interface DataDirPaths {
  root: string
  identityKey: string
  store: string
  apiSocket: string
  replSocket: string
  pidFile: string
  auditLog: string
  blobs: string
}

/** Data dir from the flag, else `$EDGELINK_HOME`, else `~/.edgelink`. */
export function resolveDataDir (flag?: string, env: NodeJS.ProcessEnv = process.env): string {
  const dir = flag ?? env.EDGELINK_HOME ?? join(homedir(), '.edgelink')
  return resolve(dir)
}

export function dataDirPaths (root: string): DataDirPaths {
  return {
    root,
    identityKey: join(root, 'identity.key'),
    store: join(root, 'store'),
    apiSocket: join(root, 'api.sock'),
    replSocket: join(root, 'repl.sock'),
    pidFile: join(root, 'agent.pid'),
    auditLog: join(root, 'audit.log'),
    blobs: join(root, 'blobs')
  }
}

/**
 * Create the data dir (mode 0700) if needed and check it is usable.
 * An existing dir that others can read is tightened to 0700: it holds the host key.
 */
export function prepareDataDir (root: string): { paths: DataDirPaths, tightened: boolean } {
  const paths = dataDirPaths(root)
  if (Buffer.byteLength(paths.replSocket) > MAX_SOCKET_PATH) {
    throw new EdgelinkError(`data dir path ${root} is too long for its unix sockets (limit ${MAX_SOCKET_PATH - 'repl.sock'.length - 1} characters); choose a shorter --data-dir`, 'DATA_DIR_INVALID', 400)
  }
  try {
    mkdirSync(root, { recursive: true, mode: 0o700 })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw new EdgelinkError(`data dir ${root} exists but is not a directory; choose another --data-dir`, 'DATA_DIR_INVALID', 400)
    if (code === 'ENOTDIR') throw new EdgelinkError(`cannot create data dir ${root}: part of its path is a file, not a directory; choose another --data-dir`, 'DATA_DIR_INVALID', 400)
    throw new EdgelinkError(`cannot create data dir ${root}: ${code ?? String(err)}; choose another --data-dir or fix its parent's permissions`, 'DATA_DIR_INVALID', 400)
  }
  const st = statSync(root)
  if (!st.isDirectory()) {
    throw new EdgelinkError(`data dir ${root} exists but is not a directory; choose another --data-dir`, 'DATA_DIR_INVALID', 400)
  }
  let tightened = false
  if ((st.mode & 0o077) !== 0) {
    chmodSync(root, 0o700)
    tightened = true
  }
  return { paths, tightened }
}
