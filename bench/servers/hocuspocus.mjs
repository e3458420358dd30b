// Hocuspocus (npm `@hocuspocus/server` 4.x) on 127.0.0.1: no authentication hook,
// default configuration otherwise. In memory, or with `--sqlite PATH` its SQLite
// extension (`@hocuspocus/extension-sqlite`), which stores a document's whole state
// 2 s after its last change (at most 10 s apart while changes go on: Hocuspocus's
// default debounce), when its last client leaves and when the server stops.
//
//   node bench/servers/hocuspocus.mjs PORT [--sqlite PATH]

import { Server } from '@hocuspocus/server'

const port = Number(process.argv[2])
const extensions = []
const sqlite = process.argv.indexOf('--sqlite')
if (sqlite !== -1) {
  const { SQLite } = await import('@hocuspocus/extension-sqlite')
  extensions.push(new SQLite({ database: process.argv[sqlite + 1] }))
}
const server = new Server({
  port,
  address: '127.0.0.1',
  quiet: true,
  stopOnSignals: true,
  extensions
})
await server.listen()
console.log(`hocuspocus on 127.0.0.1:${port}${sqlite !== -1 ? ' with SQLite' : ''}`)
