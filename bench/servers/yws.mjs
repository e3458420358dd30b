// The y-websocket reference server (npm `@y/websocket-server`) on 127.0.0.1, the way
// its own bin/server.js runs it: in memory, or with its LevelDB persistence when the
// YPERSISTENCE environment variable names a directory (read by the package at import).
//
//   node bench/servers/yws.mjs PORT

import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const port = Number(process.argv[2])
const wss = new WebSocketServer({ noServer: true })
const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' })
  res.end('okay')
})
wss.on('connection', setupWSConnection)
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request))
})
server.listen(port, '127.0.0.1', () => console.log(`y-websocket-server on 127.0.0.1:${port}`))
const stop = () => { server.close(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
