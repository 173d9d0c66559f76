/**
 * The lab itself (scripts/lab.sh): what the e2e tests stand on. It builds its LAN only
 * inside namespaces it creates, leaves the root namespace as it found it, cleans up after
 * a half-failed `up`, tears itself down when its TTL expires, and its partition/addr
 * controls do what they say. No agent is needed except where noted.
 */
import { spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { GiveUp, LAB_SH, Lab, labRequired, labUnavailableReason, run, waitFor } from '../helpers/lab.js'

const unavailable = labUnavailableReason()
const skip = unavailable != null && !labRequired()
const suffix = skip ? ` [skipped: ${unavailable}]` : ''

interface IpLink { ifname: string }
interface IpAddr { ifname: string, addr_info: Array<{ local: string, prefixlen: number }> }

async function ipJson<T> (args: string[]): Promise<T> {
  const r = await run('ip', ['-j', ...args])
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`)
  return r.json<T>()
}

/** What the lab must never change in the root namespace. */
async function rootSnapshot (): Promise<{ links: string[], addrs: string[], routes: string }> {
  const links = (await ipJson<IpLink[]>(['link', 'show'])).map(l => l.ifname).sort()
  const addrs = (await ipJson<IpAddr[]>(['addr', 'show'])).flatMap(a => a.addr_info.map(i => `${a.ifname} ${i.local}/${i.prefixlen}`)).sort()
  const routes = (await run('ip', ['route', 'show', 'table', 'all'])).stdout
  return { links, addrs, routes }
}

async function namespacesOf (lab: string): Promise<string[]> {
  const out = (await run('ip', ['netns', 'list'])).stdout
  return out.split('\n').map(l => l.split(' ')[0]).filter(n => n.startsWith(`el-${lab}-`)).sort()
}

function uniqueName (tag: string): string {
  return `t${process.pid}${tag}${Math.floor(Math.random() * 46656).toString(36)}`
}

describe('lab.sh usage', () => {
  it('documents every subcommand in `help` and exits 2 on a usage error', async () => {
    const help = await run('bash', [LAB_SH, 'help'])
    expect(help.code).toBe(0)
    for (const cmd of ['up N', 'down', 'start HOST', 'stop HOST', 'kill HOST', 'exec HOST', 'cli HOST', 'addr HOST NEWIP', 'netem HOST', 'partition HOST', 'heal HOST', 'list']) {
      expect(help.stdout).toContain(cmd)
    }
    const bad = await run('bash', [LAB_SH, 'frobnicate'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('unknown command')
  })
})

describe.skipIf(skip)('lab.sh builds the LAN inside its own namespaces' + suffix, () => {
  beforeAll(() => {
    if (unavailable != null) throw new Error(`e2e tests must run here (CI or EDGELINK_E2E=require) but no lab can be built: ${unavailable}`)
  })

  it('adds nothing to the root namespace and removes everything at down', async () => {
    const before = await rootSnapshot()
    const lab = await Lab.up(2)
    try {
      expect(await namespacesOf(lab.name)).toEqual([`el-${lab.name}-h1`, `el-${lab.name}-h2`, `el-${lab.name}-sw`])
      expect(await rootSnapshot()).toEqual(before)

      // Inside a host: lo up, lan0 with the lab address, a multicast route, and no way out.
      const addrs = (await lab.exec('h1', ['ip', '-j', 'addr', 'show'])).json<IpAddr[]>()
      expect(addrs.map(a => a.ifname).sort()).toEqual(['lan0', 'lo'])
      expect(addrs.find(a => a.ifname === 'lan0')?.addr_info.filter(i => i.local.includes('.'))).toEqual([
        expect.objectContaining({ local: '10.213.0.11', prefixlen: 24 })
      ])
      const routes = (await lab.exec('h1', ['ip', '-4', 'route', 'show'])).stdout
      expect(routes).toMatch(/^224\.0\.0\.0\/4 dev lan0/m)
      expect(routes).not.toMatch(/^default/m)
      expect(routes.trim().split('\n')).toHaveLength(2)
    } finally {
      await lab.down()
    }
    expect(await namespacesOf(lab.name)).toEqual([])
    expect(existsSync(lab.dir)).toBe(false)
    expect(await rootSnapshot()).toEqual(before)
    // down is idempotent.
    expect((await lab.sh(['down'])).code).toBe(0)
  })

  it('lets two labs with the same addresses coexist', async () => {
    const a = await Lab.up(1)
    try {
      const b = await Lab.up(1)
      try {
        const addrOf = async (l: Lab): Promise<string> => (await l.exec('h1', ['ip', '-4', '-o', 'addr', 'show', 'dev', 'lan0'])).stdout
        expect(await addrOf(a)).toContain('10.213.0.11/24')
        expect(await addrOf(b)).toContain('10.213.0.11/24')
        await a.down()
        expect(await namespacesOf(a.name)).toEqual([])
        expect(await namespacesOf(b.name)).toHaveLength(2)
        expect(await b.list()).toContain(`el-${b.name}-h1`)
      } finally {
        await b.down()
      }
    } finally {
      await a.down()
    }
  })

  it('removes a half-built lab when up fails midway', async () => {
    const name = uniqueName('f')
    // An `ip` that fails when it is asked to give h2 its address.
    const shim = mkdtempSync(join(tmpdir(), 'el-ipshim-'))
    try {
      const realIp = (await run('bash', ['-c', 'command -v ip'])).stdout.trim()
      writeFileSync(join(shim, 'ip'), `#!/bin/sh\ncase " $* " in *" 10.213.0.12/24 "*) echo "injected failure" >&2; exit 1;; esac\nexec ${realIp} "$@"\n`)
      chmodSync(join(shim, 'ip'), 0o755)
      const env = { ...process.env, LAB: name, LAB_DIR: join(tmpdir(), `el-lab-${name}`), LAB_TTL: '2m', PATH: `${shim}:${process.env.PATH ?? ''}` }
      const r = await run('bash', [LAB_SH, 'up', '3'], { env })
      expect(r.code).not.toBe(0)
      expect(r.stderr).toContain('injected failure')
      expect(r.stderr).toContain('up failed')
      expect(await namespacesOf(name)).toEqual([])
      // Its watchdog never started, or was stopped.
      expect(existsSync(join(env.LAB_DIR, 'watchdog.pid'))).toBe(false)
      expect((await run('bash', [LAB_SH, 'down', '--purge'], { env })).code).toBe(0)
      expect(existsSync(env.LAB_DIR)).toBe(false)
    } finally {
      rmSync(shim, { recursive: true, force: true })
    }
  })

  it('tears itself down when LAB_TTL expires', async () => {
    const lab = await Lab.up(1, { ttl: '1s' })
    try {
      await waitFor('the watchdog to remove the lab', async () => (await namespacesOf(lab.name)).length === 0, { timeoutMs: 20_000, intervalMs: 100 })
      expect(readFileSync(join(lab.dir, 'watchdog.log'), 'utf8')).toContain('LAB_TTL expired')
    } finally {
      await lab.down()
    }
  })

  describe('host controls', () => {
    let lab: Lab | undefined
    beforeAll(async () => { lab = await Lab.up(2) })
    afterAll(async () => { await lab?.down() })

    /** Can h1 open a TCP connection to ip:port (1 s budget)? Dials lab addresses only. */
    async function canConnect (l: Lab, from: string, ip: string, port: number): Promise<boolean> {
      const code = `const s=require('net').connect(${port},'${ip}');s.setTimeout(1000,()=>process.exit(3));s.on('connect',()=>process.exit(0)).on('error',()=>process.exit(4))`
      const r = await l.exec(from, [process.execPath, '-e', code])
      return r.code === 0
    }

    it('partition cuts a host off in both directions and heal plugs it back', async () => {
      if (lab == null) throw new Error('no lab')
      const l = lab
      // A TCP listener inside h2 (killed by `down` with everything else in the lab).
      const server = spawn('bash', [LAB_SH, 'exec', 'h2', process.execPath, '-e',
        "require('net').createServer(s=>s.end()).listen(4100,'10.213.0.12',()=>console.log('listening'))"], { env: l.env, stdio: ['ignore', 'pipe', 'inherit'] })
      try {
        await waitFor('the listener in h2', async () => {
          if (server.exitCode != null) throw new GiveUp(`listener exited ${server.exitCode}`)
          return await canConnect(l, 'h1', '10.213.0.12', 4100)
        }, { timeoutMs: 15_000, intervalMs: 100 })

        await l.partition('h2')
        expect(await canConnect(l, 'h1', '10.213.0.12', 4100)).toBe(false)
        expect(await l.list()).toMatch(/h2 .* cut /)
        // h2 keeps its address and routes while cut off.
        expect((await l.exec('h2', ['ip', '-4', 'route', 'show'])).stdout).toMatch(/^224\.0\.0\.0\/4 dev lan0/m)

        await l.heal('h2')
        await waitFor('h1 to reach h2 again', async () => await canConnect(l, 'h1', '10.213.0.12', 4100), { timeoutMs: 15_000, intervalMs: 100 })
      } finally {
        server.kill('SIGTERM')
      }
    })

    it('addr gives a host a new address in the lab subnet and refuses others', async () => {
      if (lab == null) throw new Error('no lab')
      await lab.addr('h2', '10.213.0.99')
      const show = (await lab.exec('h2', ['ip', '-4', '-o', 'addr', 'show', 'dev', 'lan0'])).stdout
      expect(show).toContain('10.213.0.99/24')
      expect(show).not.toContain('10.213.0.12/')
      expect((await lab.exec('h2', ['ip', '-4', 'route', 'show'])).stdout).toMatch(/^224\.0\.0\.0\/4 dev lan0/m)
      expect((await lab.sh(['addr', 'h2', '192.0.2.7'], { allowFailure: true })).code).toBe(2)
      const taken = await lab.sh(['addr', 'h2', '10.213.0.11'], { allowFailure: true })
      expect(taken.code).toBe(1)
      expect(taken.stderr).toContain('in use by h1')
    })
  })
})
