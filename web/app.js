// The live odds page. Anyone sees the events (GET /api/events); a player who logs in
// gets them live through the official phoenix client: every event's `event:{id}` topic
// for odds and statuses, and `user:{id}` for the balance, the bets and the bet slip.
import { Socket } from "/page/phoenix.js";

const $ = (id) => document.getElementById(id);

const session = { token: null, user: null, socket: null, channel: null };
const events = new Map(); // id -> the event as the server last described it
const openBets = new Map(); // id -> bet
let pick = null; // the slip's {marketId, key}

function element(tag, { className, text, data = {} } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  Object.assign(node.dataset, data);
  node.append(...children);
  return node;
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { "content-type": "application/json" };
  if (session.token) headers.authorization = `Bearer ${session.token}`;
  const response = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(data?.error?.message ?? `HTTP ${response.status}`);
  return data;
}

function findMarket(marketId) {
  for (const event of events.values()) {
    const market = event.markets.find((m) => m.id === marketId);
    if (market) return { event, market };
  }
  return null;
}

// -- events and markets ----------------------------------------------------------------

function renderEvent(event) {
  const when = new Date(event.starts_at).toLocaleString();
  return element("article", { className: "event", data: { eventId: event.id } }, [
    element("h2", { text: event.name }),
    element("p", { className: "muted", text: `${event.category} · ${when} · ${event.status}` }),
    ...event.markets.map(renderMarket),
  ]);
}

function renderMarket(market) {
  const prices = market.type === "raffle"
    ? [element("span", { className: "muted", text: `raffle of ${market.tickets} tickets` })]
    : market.selections.map((selection) => priceButton(market, selection));
  return element("div", { className: `market ${market.status}`, data: { marketId: market.id } }, [
    element("h3", { text: `${market.name} ` }, [
      element("span", { className: "status", text: market.status }),
    ]),
    element("div", { className: "prices" }, prices),
  ]);
}

function priceButton(market, selection) {
  const button = element("button", {
    className: "price", data: { marketId: market.id, selection: selection.key },
  }, [
    element("span", { text: selection.name }),
    element("span", { className: "odds", text: selection.odds ?? "–" }),
  ]);
  button.type = "button";
  button.disabled = market.status !== "open";
  button.addEventListener("click", () => choose(market.id, selection.key));
  return button;
}

function showEvent(event) {
  const known = events.has(event.id);
  events.set(event.id, event);
  const shown = document.querySelector(`[data-event-id="${event.id}"]`);
  if (shown) shown.replaceWith(renderEvent(event));
  else $("events").append(renderEvent(event));
  if (!known && session.socket) joinEvent(event.id);
  renderSlip();
}

function oddsUpdated({ market_id: marketId, odds }) {
  const found = findMarket(marketId);
  if (!found) return;
  for (const selection of found.market.selections) {
    const price = odds[selection.key];
    if (price === undefined || price === selection.odds) continue;
    selection.odds = price;
    const button = document.querySelector(
      `.price[data-market-id="${marketId}"][data-selection="${CSS.escape(selection.key)}"]`);
    button.querySelector(".odds").textContent = price;
    button.animate([{ backgroundColor: "#ffe08a" }, {}], 1200);
  }
  renderSlip();
}

function statusChanged(eventId, { market_id: marketId, status }) {
  const event = events.get(eventId);
  const target = marketId ? event.markets.find((m) => m.id === marketId) : event;
  if (target) target.status = status;
  showEvent(event);
}

function joinEvent(eventId) {
  const channel = session.socket.channel(`event:${eventId}`);
  channel.on("event_data", showEvent);
  channel.on("odds_updated", oddsUpdated);
  channel.on("status_changed", (change) => statusChanged(eventId, change));
  channel.join();
}

// -- the player: balance, slip, open bets ------------------------------------------------

function renderBalance(balance) {
  $("balance").textContent = `${balance.balance} ${balance.currency}`;
  $("available").textContent = balance.available;
}

function renderOpenBets() {
  $("open-bets").replaceChildren(...[...openBets.values()].map((bet) => {
    const market = findMarket(bet.market_id)?.market;
    const selection = market?.selections.find((s) => s.key === bet.selection)?.name;
    const payout = bet.potential_payout ? ` → ${bet.potential_payout}` : "";
    return element("li", {
      data: { betId: bet.id },
      text: `${market?.name ?? "market"}: ${selection ?? bet.selection} · ${bet.amount} @ `
        + `${bet.odds}${payout}`,
    });
  }));
}

function showResult(text, refused = false) {
  $("slip-result").textContent = text;
  $("slip-result").className = refused ? "refused" : "";
}

function choose(marketId, key) {
  pick = { marketId, key };
  showResult("");
  renderSlip();
}

function picked() {
  const found = pick && findMarket(pick.marketId);
  const selection = found?.market.selections.find((s) => s.key === pick.key);
  return selection ? { ...found, selection } : null;
}

function renderSlip() {
  const current = picked();
  const submit = $("slip-form").querySelector("button");
  if (!current) {
    $("slip-pick").textContent = "Pick a price.";
    submit.disabled = true;
    return;
  }
  const { event, market, selection } = current;
  $("slip-pick").textContent =
    `${event.name} · ${market.name}: ${selection.name} @ ${selection.odds ?? "pool"}`;
  submit.disabled = !session.channel || market.status !== "open";
}

function placeBet(submitted) {
  submitted.preventDefault();
  const { market, selection } = picked();
  const bet = { market_id: market.id, selection: selection.key, amount: $("stake").value.trim() };
  // Fixed odds: bet at the price the slip shows, or be told it moved.
  if (market.type === "fixed_odds") Object.assign(bet, { odds: selection.odds, accept_odds: "exact" });
  session.channel.push("place_bet", bet)
    .receive("ok", ({ bet: placed }) => {
      openBets.set(placed.id, placed);
      renderOpenBets();
      showResult(`Placed: ${placed.amount} on ${selection.name} @ ${placed.odds}`);
    })
    .receive("error", (reply) => showResult(`Refused: ${reply.error?.message ?? reply.reason}`, true))
    .receive("timeout", () => showResult("No answer yet: see your open bets", true));
}

// -- logging in and out ------------------------------------------------------------------

function connect() {
  const socket = new Socket("/socket", { authToken: session.token });
  socket.onOpen(() => { $("connection").textContent = "live"; });
  socket.onClose(() => { $("connection").textContent = "offline"; });
  socket.connect();
  session.socket = socket;
  for (const eventId of events.keys()) joinEvent(eventId);

  const channel = socket.channel(`user:${session.user.id}`);
  channel.on("balance", renderBalance);
  channel.on("bet_placed", (bet) => { openBets.set(bet.id, bet); renderOpenBets(); });
  channel.on("bet_settled", (bet) => {
    openBets.delete(bet.id);
    renderOpenBets();
    showResult(`Bet ${bet.status}: paid ${bet.payout}`);
  });
  // After every (re)join: what changed before the topic was ours is read once.
  channel.join().receive("ok", async () => {
    channel.push("get_balance", {}).receive("ok", renderBalance);
    const { bets } = await api("/api/bets");
    openBets.clear();
    for (const bet of bets.filter((b) => b.status === "accepted")) openBets.set(bet.id, bet);
    renderOpenBets();
  });
  session.channel = channel;
  renderSlip();
}

async function logIn(submitted) {
  submitted.preventDefault();
  const form = new FormData($("login"));
  try {
    const { user, token } = await api("/api/auth/login", {
      method: "POST", body: { email: form.get("email"), password: form.get("password") },
    });
    Object.assign(session, { user, token });
  } catch (error) {
    $("login-error").textContent = error.message;
    return;
  }
  $("login-error").textContent = "";
  $("login").hidden = true;
  $("account").hidden = false;
  $("who").textContent = session.user.username;
  connect();
}

async function logOut() {
  session.socket.disconnect();
  try {
    await api("/api/auth/logout", { method: "POST" });
  } catch {
    // The token is forgotten here either way; one the server refuses is already dead.
  }
  Object.assign(session, { token: null, user: null, socket: null, channel: null });
  openBets.clear();
  renderOpenBets();
  renderSlip();
  $("login").hidden = false;
  $("account").hidden = true;
}

$("login").addEventListener("submit", logIn);
$("logout").addEventListener("click", logOut);
$("slip-form").addEventListener("submit", placeBet);
for (const event of (await api("/api/events")).events) showEvent(event);
