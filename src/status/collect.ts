/**
 * What this host reports about itself: system facts read from the OS, and the
 * agent's own state passed in by the caller.
 */
import { readFileSync, statfsSync } from 'node:fs'
import { arch, cpus, freemem, loadavg, platform, release, totalmem } from 'node:os'

export interface SystemFacts {
  platform: string
  osRelease: string
  kernel: string
  arch: string
  cpus: number
  load: [number, number, number]
  memTotal: number
  memFree: number
  diskTotal: number
  diskFree: number
}

/** Below this much free space in the data dir the host reports itself degraded. */
export const LOW_DISK_BYTES = 1024 * 1024 * 1024
/** Or below this fraction of the file system. */
export const LOW_DISK_FRACTION = 0.05

let distro: string | undefined

/** PRETTY_NAME from /etc/os-release, read once. */
function osRelease (): string {
  if (distro != null) return distro
  try {
    const m = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(readFileSync('/etc/os-release', 'utf8'))
    distro = m?.[1] ?? platform()
  } catch {
    distro = platform()
  }
  return distro
}

export function collectSystem (dataDir: string): SystemFacts {
  let diskTotal = 0
  let diskFree = 0
  try {
    const s = statfsSync(dataDir)
    diskTotal = s.blocks * s.bsize
    diskFree = s.bavail * s.bsize
  } catch {
    // Reported as 0/0; health says why.
  }
  const [l1, l5, l15] = loadavg()
  return {
    platform: platform(),
    osRelease: osRelease(),
    kernel: release(),
    arch: arch(),
    cpus: cpus().length,
    load: [l1, l5, l15],
    memTotal: totalmem(),
    memFree: freemem(),
    diskTotal,
    diskFree
  }
}

/** Health from the facts: `ok`, or `degraded` with the reasons. */
export function healthOf (f: SystemFacts): { health: 'ok' | 'degraded', detail: string } {
  const reasons: string[] = []
  if (f.diskTotal === 0) reasons.push('cannot read the data dir\'s file system')
  else if (f.diskFree < LOW_DISK_BYTES || f.diskFree / f.diskTotal < LOW_DISK_FRACTION) reasons.push(`low disk space in the data dir (${Math.round(f.diskFree / 1024 / 1024)} MiB free)`)
  return reasons.length === 0 ? { health: 'ok', detail: '' } : { health: 'degraded', detail: reasons.join('; ') }
}
