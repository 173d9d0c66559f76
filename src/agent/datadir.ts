import { chmodSync, mkdirSync, readdirSync, statSync } from 'node:fs'
import { homedir } from 'node:os'
import { basename, join, resolve } from 'node:path'
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

/**
 * Data dir from the flag, else `$EDGELINK_HOME`, else `~/.edgelink`. An empty flag is a
 * usage error (it would have meant the current directory); an empty `EDGELINK_HOME` counts
 * as unset, as a variable exported empty by a script usually is.
 */
export function resolveDataDir (flag?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (flag != null && flag.trim() === '') throw new EdgelinkError('--data-dir is empty; give a directory, e.g. --data-dir ~/.edgelink', 'USAGE', 400)
  const home = env.EDGELINK_HOME != null && env.EDGELINK_HOME.trim() !== '' ? env.EDGELINK_HOME : undefined
  return resolve(flag ?? home ?? join(homedir(), '.edgelink'))
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
 * An existing dir that others can read is tightened to 0700 (it holds the host key), but
 * only if it is empty or already a data dir: a shared directory given by mistake (`/tmp`,
 * a home directory) is refused, not made private to this user.
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
    let entries: string[]
    try {
      entries = readdirSync(root)
    } catch (err) {
      throw new EdgelinkError(`cannot read data dir ${root}: ${(err as NodeJS.ErrnoException).code ?? String(err)}; choose another --data-dir`, 'DATA_DIR_INVALID', 400)
    }
    // Ours: the names in DataDirPaths, rotated audit logs, a key file being written.
    const own = new Set(Object.entries(paths).filter(([k]) => k !== 'root').map(([, p]) => basename(p)))
    const foreign = entries.filter(e => !own.has(e) && !e.startsWith('audit.log.') && !e.startsWith('identity.key.'))
    if (foreign.length > 0) {
      throw new EdgelinkError(`data dir ${root} is open to other users (mode ${(st.mode & 0o7777).toString(8)}) and holds files that are not edgelink's (${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', …' : ''}); give the agent a directory of its own, e.g. --data-dir ~/.edgelink`, 'DATA_DIR_INVALID', 400)
    }
    try {
      chmodSync(root, 0o700)
    } catch (err) {
      throw new EdgelinkError(`data dir ${root} is open to other users (mode ${(st.mode & 0o7777).toString(8)}) and cannot be made private (${(err as NodeJS.ErrnoException).code ?? String(err)}); run \`chmod 700 ${root}\` as its owner, or choose another --data-dir`, 'DATA_DIR_INVALID', 400)
    }
    tightened = true
  }
  return { paths, tightened }
}
