// A line-oriented driver for the real Yjs client stack, used by tests/test_interop.py.
//
// Each line on stdin is one JSON command {"seq": n, "cmd": ..., ...}; each command is
// answered by exactly one line {"seq": n, "ok": true, ...} or {"seq": n, "ok": false,
// "error": ...} on stdout. Unsolicited lines {"event": ...} report what a watched doc
// received or that a stream ended. Every wait here waits for a condition and has a
// timeout. Providers are y-websocket's WebsocketProvider with the `ws` package as
// WebSocket; the BroadcastChannel is disabled (Node 20 has one, and providers in one
// process would otherwise sync through it instead of through the server).

import * as readline from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const ROOTS = ['workouts', 'weights', 'food_logs', 'favorites', 'ocr_drafts']

/** @type {Map<string, {doc: Y.Doc, provider: WebsocketProvider, stream: any, sent: number, closes: number[]}>} */
const clients = new Map()

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const client = (id) => {
  const c = clients.get(id)
  if (c === undefined) throw new Error(`no client ${id}`)
  return c
}

const dump = (doc) => Object.fromEntries(ROOTS.map((r) => [r, doc.getMap(r).toJSON()]))

// JSON with object keys sorted: a Y.Map lists its keys in the order this replica
// learned of them, which differs between replicas holding the same content.
const canonical = (value) => JSON.stringify(value, (_key, v) =>
  v !== null && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    : v)

const stateVector = (doc) => Buffer.from(Y.encodeStateVector(doc)).toString('base64')

// Resolve once predicate() holds; it is checked now and on every given event.
// Rejects after timeoutMs with describe() in the message.
const until = (predicate, timeoutMs, describe, subscribe) =>
  new Promise((resolve, reject) => {
    if (predicate()) return resolve()
    const unsubs = []
    const done = (err) => {
      clearTimeout(timer)
      clearInterval(poll)
      for (const u of unsubs) u()
      err ? reject(err) : resolve()
    }
    const check = () => { if (predicate()) done() }
    for (const [target, event] of subscribe) {
      target.on(event, check)
      unsubs.push(() => target.off(event, check))
    }
    // Events cover every change; the slow poll only guards against a missed one.
    const poll = setInterval(check, 50)
    const timer = setTimeout(
      () => done(new Error(`timeout after ${timeoutMs} ms: ${describe()}`)), timeoutMs)
  })

const waitSynced = (c, timeoutMs) =>
  until(() => c.provider.synced, timeoutMs,
    () => `provider not synced (wsconnected=${c.provider.wsconnected}, closes=${c.closes})`,
    [[c.provider, 'sync']])

// An entry value: a plain object becomes a Y.Map of its fields, anything else is stored as is.
const toY = (value) =>
  value !== null && typeof value === 'object' && !Array.isArray(value)
    ? new Y.Map(Object.entries(value))
    : value

const applyOp = (op) => {
  const root = client(op.id).doc.getMap(op.root)
  if (op.op === 'put') {
    root.set(op.key, toY(op.value))
  } else if (op.op === 'field') {
    const entry = root.get(op.key)
    if (!(entry instanceof Y.Map)) throw new Error(`${op.root}.${op.key} is not a Y.Map`)
    entry.set(op.field, op.value)
  } else if (op.op === 'delete') {
    root.delete(op.key)
  } else if (op.op === 'blob') {
    root.set(op.key, 'x'.repeat(op.size)) // made here: a large string need not cross stdin
  } else {
    throw new Error(`unknown op ${op.op}`)
  }
}

const commands = {
  async connect ({ id, url, name, token, timeout_ms: timeoutMs = 15000 }) {
    if (clients.has(id)) throw new Error(`client ${id} exists`)
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(url, name, doc, {
      WebSocketPolyfill: WebSocket,
      params: { token },
      disableBc: true,
      maxBackoffTime: 500 // reconnect quickly after a server restart
    })
    const c = { doc, provider, stream: null, sent: 0, closes: [] }
    provider.on('connection-close', (event) => { if (event) c.closes.push(event.code) })
    clients.set(id, c)
    await waitSynced(c, timeoutMs)
    return { client_id: doc.clientID }
  },

  // Apply every op synchronously, in this order, in one turn of the event loop: no
  // client can receive anything from the server between two of them.
  edit ({ ops }) {
    for (const op of ops) applyOp(op)
    return {}
  },

  dump ({ id }) {
    const c = client(id)
    return { doc: dump(c.doc), synced: c.provider.synced, state_vector: stateVector(c.doc), closes: c.closes }
  },

  // Wait until the server has closed a provider's socket; the close codes it got.
  async wait_close ({ id, timeout_ms: timeoutMs = 15000 }) {
    const c = client(id)
    await until(() => c.closes.length > 0, timeoutMs, () => `${id} not closed`,
      [[c.provider, 'connection-close']])
    return { closes: c.closes }
  },

  disconnect ({ id }) {
    client(id).provider.disconnect()
    return {}
  },

  async reconnect ({ id, timeout_ms: timeoutMs = 15000 }) {
    const c = client(id)
    c.provider.connect()
    await waitSynced(c, timeoutMs)
    return {}
  },

  // Wait until the providers are synced and their docs have the same state vector and
  // the same JSON (a deletion changes only the latter), then return each one's JSON.
  async converge ({ ids, timeout_ms: timeoutMs = 15000 }) {
    const cs = ids.map(client)
    const svs = () => cs.map((c) => stateVector(c.doc))
    const same = () => new Set(svs()).size === 1 &&
      new Set(cs.map((c) => canonical(dump(c.doc)))).size === 1
    await until(() => cs.every((c) => c.provider.synced) && same(),
      timeoutMs, () => `docs differ; state vectors ${JSON.stringify(svs())}`,
      cs.flatMap((c) => [[c.doc, 'update'], [c.provider, 'sync']]))
    return { docs: Object.fromEntries(ids.map((id, i) => [id, dump(cs[i].doc)])) }
  },

  // Wait until every key is present in root (or absent, with absent: true).
  async wait_keys ({ id, root, keys, absent = false, timeout_ms: timeoutMs = 15000 }) {
    const c = client(id)
    const map = c.doc.getMap(root)
    const missing = () => keys.filter((k) => map.has(k) === absent)
    await until(() => missing().length === 0, timeoutMs,
      () => `${id}.${root}: ${absent ? 'still present' : 'missing'} ${missing().slice(0, 20)}`,
      [[c.doc, 'update']])
    return { doc: dump(c.doc) }
  },

  // Report every key added to root from now on as {"event": "key", ...}.
  watch ({ id, root }) {
    const c = client(id)
    c.doc.getMap(root).observe((event) => {
      for (const [key, change] of event.changes.keys) {
        if (change.action === 'add') emit({ event: 'key', id, root, key })
      }
    })
    return {}
  },

  // Put a new entry `${prefix}${i}` into root every interval_ms, count times at most.
  stream ({ id, root, prefix, count, interval_ms: intervalMs }) {
    const c = client(id)
    if (c.stream !== null) throw new Error(`${id} is streaming already`)
    c.stream = setInterval(() => {
      const i = c.sent
      c.doc.getMap(root).set(`${prefix}${i}`, new Y.Map([['weight', 70 + i / 100],
        ['date_time', new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString()]]))
      c.sent += 1
      if (c.sent >= count) {
        clearInterval(c.stream)
        emit({ event: 'stream_done', id, sent: c.sent })
      }
    }, intervalMs)
    return {}
  },

  // Stop the stream; the next one of this client numbers its entries from 0 again.
  stop_stream ({ id }) {
    const c = client(id)
    const sent = c.sent
    clearInterval(c.stream)
    c.stream = null
    c.sent = 0
    return { sent }
  },

  // Set the provider's awareness state; with renew_ms, set it again that often (a
  // y-protocols client renews every 15 s by itself; tests use a shorter timeout).
  set_awareness ({ id, state, renew_ms: renewMs = 0 }) {
    const c = client(id)
    clearInterval(c.renew)
    c.provider.awareness.setLocalState(state)
    if (renewMs > 0) c.renew = setInterval(() => c.provider.awareness.setLocalState(state), renewMs)
    return {}
  },

  // Wait until the provider knows a state of awareness client `client_id` (or knows
  // none, with absent: true); the states it knows.
  async wait_awareness ({ id, client_id: clientId, absent = false, timeout_ms: timeoutMs = 15000 }) {
    const c = client(id)
    const states = c.provider.awareness.getStates()
    await until(() => states.has(clientId) === !absent, timeoutMs,
      () => `${id}: awareness of ${clientId} ${absent ? 'still there' : 'missing'}`,
      [[c.provider.awareness, 'change']])
    return { states: Object.fromEntries(states) }
  },

  // Forget a client for good: no reconnect, nothing more sent.
  destroy ({ id }) {
    const c = client(id)
    clearInterval(c.stream)
    clearInterval(c.renew)
    c.provider.destroy()
    c.doc.destroy()
    clients.delete(id)
    return {}
  }
}

const handle = async (line) => {
  let msg
  try {
    msg = JSON.parse(line)
  } catch (err) {
    emit({ seq: null, ok: false, error: `bad JSON: ${err.message}` })
    return
  }
  try {
    const fn = commands[msg.cmd]
    if (fn === undefined) throw new Error(`unknown command ${msg.cmd}`)
    emit({ seq: msg.seq, ok: true, ...(await fn(msg)) })
  } catch (err) {
    emit({ seq: msg.seq, ok: false, error: String(err && err.message ? err.message : err) })
  }
}

const input = readline.createInterface({ input: process.stdin })
input.on('line', (line) => { if (line.trim()) handle(line) })
input.on('close', () => {
  for (const id of [...clients.keys()]) commands.destroy({ id })
  process.exit(0)
})
