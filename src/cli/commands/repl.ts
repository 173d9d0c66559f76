import { connect } from 'node:net'
import type { Command } from 'commander'
import { dataDirPaths, resolveDataDir } from '../../agent/datadir.js'
import { withCommon, type CommonOptions } from '../common.js'
import { CliError } from '../errors.js'

export function registerRepl (program: Command): void {
  withCommon(program.command('repl'))
    .description('attach to the running agent\'s debug REPL (.help lists helpers; .exit leaves, the agent keeps running)')
    .action(async (opts: CommonOptions) => {
      const dataDir = resolveDataDir(opts.dataDir)
      await attach(dataDirPaths(dataDir).replSocket, dataDir)
    })
}

async function attach (socketPath: string, dataDir: string): Promise<void> {
  const stdin = process.stdin
  const terminal = stdin.isTTY === true && process.stdout.isTTY === true
  await new Promise<void>((resolve, reject) => {
    const socket = connect(socketPath)
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(new CliError(`no edgelink agent is running for data dir ${dataDir}; start one with \`edgelink agent --data-dir ${dataDir}\``, 1, 'AGENT_NOT_RUNNING'))
      } else {
        reject(new CliError(`cannot attach to the REPL at ${socketPath}: ${err.code ?? err.message}`))
      }
    })
    socket.once('connect', () => {
      socket.write(JSON.stringify({ terminal, columns: process.stdout.columns ?? 80 }) + '\n')
      if (terminal) stdin.setRawMode(true)
      stdin.pipe(socket)
      socket.pipe(process.stdout)
      socket.on('close', () => {
        if (terminal) stdin.setRawMode(false)
        stdin.unpipe(socket)
        stdin.pause()
        resolve()
      })
    })
  })
}
