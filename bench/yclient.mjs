// One fresh y-websocket client (the npm `yjs` + `y-websocket` WebsocketProvider over the
// `ws` package), timed from the socket's creation to the provider's `sync` event, with
// the whole document applied. Used by bench/cold_load.py.
//
//   node bench/yclient.mjs '{"url": "ws://127.0.0.1:PORT/sync", "room": "NAME",
//                            "token": "...", "expectKeys": 10000, "timeoutMs": 60000}'
//
// Prints one JSON line: {"ok", "connect_to_synced_ms", "open_to_synced_ms", "keys",
// "state_bytes"} or {"ok": false, "error"}. Exits within timeoutMs whatever happens.

import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const args = JSON.parse(process.argv[2])
const timeoutMs = args.timeoutMs ?? 60000
const out = (obj) => { process.stdout.write(JSON.stringify(obj) + '\n') }

// A fresh Node process runs Yjs' decoder cold (not yet optimised by the JIT), which
// would make the first sync look several times slower than a running app's. Unless
// told otherwise, apply a similar local document first, off the clock and off the wire.
if (args.warmup !== false) {
  const n = Math.max(100, Math.min(args.expectKeys ?? 1000, 20000))
  for (let r = 0; r < 3; r++) {
    const src = new Y.Doc()
    const map = src.getMap('workouts')
    src.transact(() => {
      for (let i = 0; i < n; i++) map.set(`warmup-${i}`, { name: 'bench press', sets: 3, reps: 8, weight: 60 + (i % 40) / 2 })
    })
    Y.applyUpdate(new Y.Doc(), Y.encodeStateAsUpdate(src))
  }
}

const doc = new Y.Doc()
let openedAt = null
const t0 = performance.now()
const provider = new WebsocketProvider(args.url, args.room, doc, {
  WebSocketPolyfill: WebSocket,
  params: { token: args.token },
  disableBc: true,
  maxBackoffTime: 1000
})
provider.on('status', ({ status }) => {
  if (status === 'connected' && openedAt === null) openedAt = performance.now()
})

const timer = setTimeout(() => {
  out({ ok: false, error: `not synced within ${timeoutMs} ms (connected: ${provider.wsconnected})` })
  provider.destroy()
  process.exit(1)
}, timeoutMs)

provider.on('sync', (synced) => {
  if (!synced) return
  const t1 = performance.now()
  const keys = doc.getMap('workouts').size
  clearTimeout(timer)
  const ok = args.expectKeys == null || keys === args.expectKeys
  out({
    ok,
    error: ok ? undefined : `synced with ${keys} keys, expected ${args.expectKeys}`,
    connect_to_synced_ms: t1 - t0,
    open_to_synced_ms: openedAt === null ? null : t1 - openedAt,
    keys,
    state_bytes: Y.encodeStateAsUpdate(doc).length
  })
  provider.destroy()
  setTimeout(() => process.exit(ok ? 0 : 1), 50)
})
