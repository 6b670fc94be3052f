// The seed README's WebSocket client code (lootify-README.md, "WebSocket"), run with the
// official `phoenix` npm client against the Serve app. Driven by
// tests/gateway/test_phoenix_js.py, which does the parts a player's client does not
// (operator, event, market, deposit, closing and settling the market).
//
// Every message received is printed to stdout as one JSON line:
//   {"kind": "join",  "topic", "status", "response"}
//   {"kind": "reply", "topic", "event", "status", "response"}
//   {"kind": "push",  "topic", "event", "payload"}
//   {"kind": "connect", "url", "protocol"}      (url with the token redacted)
//   {"kind": "ready", "bet_id"}                 (full flow: bet placed; now settle it)
//   {"kind": "timeout", "waiting_for"} / {"kind": "error", "message"} / {"kind": "done"}
// Exit 0 when every expected message arrived, 1 on a timeout, an error reply or a crash.
//
// Usage:
//   node seed_flow.mjs --url ws://127.0.0.1:8000/socket --token JWT --user-id U \
//        --event-id E [--market-id M --selection home_win] [--auth-token] [--short] \
//        [--expect user:some_event ...] [--timeout-ms 20000] [--debug]
//   --auth-token  send the token with Phoenix 1.8's `authToken` option (Sec-WebSocket-Protocol)
//                 instead of the `token` param.
//   --short       only join both topics, get_balance and event_data (no bet).
//   --expect T:E  also wait for a push of event E on topic kind T (`user` or `event`);
//                 used to show that a message that never comes fails the run.

import { parseArgs } from "node:util"
import { Socket } from "phoenix"
import WebSocket from "ws"

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    "user-id": { type: "string" },
    "event-id": { type: "string" },
    "market-id": { type: "string" },
    selection: { type: "string", default: "home_win" },
    amount: { type: "string", default: "50.00" },
    "auth-token": { type: "boolean", default: false },
    short: { type: "boolean", default: false },
    expect: { type: "string", multiple: true, default: [] },
    "timeout-ms": { type: "string", default: "20000" },
    debug: { type: "boolean", default: false },
  },
})

for (const name of ["url", "token", "user-id", "event-id"]) {
  if (!args[name]) usage(`--${name} is required`)
}
if (!args.short && !args["market-id"]) usage("--market-id is required without --short")

const token = args.token
const userId = args["user-id"]
const eventId = args["event-id"]
const marketId = args["market-id"]
const timeoutMs = Number(args["timeout-ms"])

// -- output and bookkeeping ----------------------------------------------------------------

let finished = false

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n")
}

function finish(code, last) {
  if (finished) return
  finished = true
  try { socket.disconnect() } catch (_) { /* already gone */ }
  // Exit only once the last line is written (stdout may be a pipe).
  process.stdout.write(JSON.stringify(last) + "\n", () => process.exit(code))
}

function usage(message) {
  process.stderr.write(`seed_flow.mjs: ${message}\n`)
  process.exit(2)
}

process.on("unhandledRejection", (err) => finish(1, { kind: "error", message: String(err?.stack || err) }))
process.on("uncaughtException", (err) => finish(1, { kind: "error", message: String(err?.stack || err) }))

const received = [] // every push, in arrival order
const waiters = []

function record(topic, event, payload) {
  const msg = { kind: "push", topic, event, payload }
  received.push(msg)
  emit(msg)
  for (const w of [...waiters]) {
    if (w.predicate(msg)) {
      waiters.splice(waiters.indexOf(w), 1)
      clearTimeout(w.timer)
      w.resolve(msg)
    }
  }
}

// Resolves with the first push (already received, or still to come) that matches.
function waitFor(description, predicate, { after = 0 } = {}) {
  const found = received.slice(after).find(predicate)
  if (found) return Promise.resolve(found)
  return new Promise((resolve) => {
    const w = { predicate: (m) => received.indexOf(m) >= after && predicate(m), resolve }
    w.timer = setTimeout(() => finish(1, { kind: "timeout", waiting_for: description }), timeoutMs)
    waiters.push(w)
  })
}

// A join or push: resolves with the "ok" response; an "error" or "timeout" ends the run.
function answer(topic, event, pushed) {
  return new Promise((resolve) => {
    const kind = event === "phx_join" ? "join" : "reply"
    pushed
      .receive("ok", (resp) => {
        emit(kind === "join" ? { kind, topic, status: "ok", response: resp }
          : { kind, topic, event, status: "ok", response: resp })
        resolve(resp)
      })
      .receive("error", (resp) => {
        emit({ kind, topic, event, status: "error", response: resp })
        finish(1, { kind: "error", message: `${event} on ${topic} answered error` })
      })
      .receive("timeout", () => finish(1, { kind: "timeout", waiting_for: `${event} reply on ${topic}` }))
  })
}

// -- the seed's client code ----------------------------------------------------------------

const options = { transport: WebSocket, timeout: timeoutMs }
if (args["auth-token"]) {
  options.authToken = token // Phoenix 1.8: sent in Sec-WebSocket-Protocol, not the URL
} else {
  options.params = { token }
}
if (args.debug) {
  options.logger = (kind, msg, data) => process.stderr.write(`${kind}: ${msg} ${JSON.stringify(data ?? null)}\n`)
}

const socket = new Socket(args.url, options)
socket.onOpen(() => emit({
  kind: "connect",
  url: socket.endPointURL().replace(/token=[^&]*/, "token=<redacted>"),
  protocol: socket.conn?.protocol ?? null,
}))
socket.onError((err) => emit({ kind: "socket_error", message: String(err?.message || err?.type || err) }))
socket.connect()

const userTopic = `user:${userId}`
const userChannel = socket.channel(userTopic)
userChannel.on("balance", (balance) => record(userTopic, "balance", balance))
userChannel.on("bet_placed", (bet) => record(userTopic, "bet_placed", bet))
userChannel.on("bet_settled", (bet) => record(userTopic, "bet_settled", bet))

const eventTopic = `event:${eventId}`
const eventChannel = socket.channel(eventTopic)
eventChannel.on("odds_updated", (data) => record(eventTopic, "odds_updated", data))
eventChannel.on("status_changed", (data) => record(eventTopic, "status_changed", data))
eventChannel.on("event_data", (event) => record(eventTopic, "event_data", event))

const extra = args.expect.map((spec) => {
  const [kind, event] = spec.split(":")
  const topic = kind === "user" ? userTopic : kind === "event" ? eventTopic : usage(`bad --expect ${spec}`)
  const channel = kind === "user" ? userChannel : eventChannel
  channel.on(event, (payload) => record(topic, event, payload))
  return { topic, event }
})

const timer = setTimeout(() => finish(1, { kind: "timeout", waiting_for: "the whole flow" }), 10 * timeoutMs)

await Promise.all([
  answer(userTopic, "phx_join", userChannel.join()),
  answer(eventTopic, "phx_join", eventChannel.join()),
])
await waitFor("event_data", (m) => m.topic === eventTopic && m.event === "event_data")

if (args.short) {
  await answer(userTopic, "get_balance", userChannel.push("get_balance", {}))
} else {
  const start = received.length
  const { bet } = await answer(userTopic, "place_bet", userChannel.push("place_bet", {
    market_id: marketId,
    amount: args.amount,
    selection: args.selection,
  }))
  await waitFor("bet_placed", (m) => m.event === "bet_placed" && m.payload?.id === bet?.id)
  await waitFor("odds_updated", (m) => m.event === "odds_updated" && m.payload?.market_id === marketId,
    { after: start })
  const current = await answer(userTopic, "get_balance", userChannel.push("get_balance", {}))
  // The stake's pushes (reserved, then committed) end with the balance get_balance answered.
  await waitFor("balance after the stake", (m) => m.topic === userTopic && m.event === "balance" &&
    m.payload?.balance === current.balance && m.payload?.reserved === current.reserved,
    { after: start })

  const settledFrom = received.length
  emit({ kind: "ready", bet_id: bet.id })
  await waitFor("bet_settled", (m) => m.event === "bet_settled" && m.payload?.id === bet.id)
  await waitFor("balance after the payout", (m) => m.topic === userTopic && m.event === "balance" &&
    m.payload?.balance !== current.balance, { after: settledFrom })
  await waitFor("status_changed to settled", (m) => m.event === "status_changed" &&
    m.payload?.market_id === marketId && m.payload?.status === "settled")
}

for (const { topic, event } of extra) {
  await waitFor(`${event} on ${topic}`, (m) => m.topic === topic && m.event === event)
}

clearTimeout(timer)
finish(0, { kind: "done" })
