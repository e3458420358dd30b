// Hocuspocus (npm `@hocuspocus/server` 4.x) on 127.0.0.1, in memory: no extensions,
// no authentication hook, default configuration otherwise.
//
//   node bench/servers/hocuspocus.mjs PORT

import { Server } from '@hocuspocus/server'

const port = Number(process.argv[2])
const server = new Server({
  port,
  address: '127.0.0.1',
  quiet: true,
  stopOnSignals: true
})
await server.listen()
console.log(`hocuspocus on 127.0.0.1:${port}`)
