import { Option, type Command } from 'commander'
import { resolveDataDir } from '../agent/datadir.js'
import { ApiClient } from './client.js'

export interface CommonOptions {
  dataDir?: string
  json?: boolean
}

/** Add the options every command takes. */
export function withCommon (cmd: Command): Command {
  return cmd
    .addOption(new Option('--data-dir <dir>', 'agent data dir (default $EDGELINK_HOME, else ~/.edgelink)'))
    .option('--json', 'print one JSON document on stdout')
}

export function clientFor (opts: CommonOptions): ApiClient {
  return new ApiClient({ dataDir: resolveDataDir(opts.dataDir) })
}
