// The live page: the ticker (list and chart), the clock, and the chat.
import { SharedEventSource } from './shared-stream.js';
import { followWidth, gapAfter, line, makeChart, oncePerFrame, withGaps } from './charts.js';
import { formatTime, parseWallClock, timeElement } from './time.js';

const LIST_SIZE = 10;
const CHART_POINTS = 60;
// Keeps a long-open page light; the server holds the history anyway.
const MAX_MESSAGES = 200;

const urls = document.body.dataset;
const $ = (id) => document.getElementById(id);

// -- status ------------------------------------------------------------------

const streams = {};

function renderStatus() {
  const entries = Object.entries(streams);
  for (const [name, stream] of entries) {
    const item = document.querySelector(`.streams [data-stream="${name}"]`);
    item.dataset.state = stream.state;
    item.dataset.role = stream.role;
    item.title = `${name}: ${stream.state}, ${describeRole(stream.role)}`;
  }
  const waiting = (state) => entries.filter(([, s]) => s.state === state).map(([n]) => n);
  const reconnecting = waiting('reconnecting');
  const connecting = waiting('connecting');
  const closed = waiting('closed');
  let state = 'open';
  let text;
  if (reconnecting.length) {
    state = 'reconnecting';
    text = `Reconnecting: ${reconnecting.join(', ')}…`;
  } else if (connecting.length) {
    state = 'connecting';
    text = 'Connecting…';
  } else if (closed.length) {
    state = 'closed';
    text = `Disconnected: ${closed.join(', ')}`;
  } else {
    const shared = entries.every(([, s]) => s.role === 'follower');
    text = shared ? 'Live (shared with another tab)' : 'Live';
  }
  $('status').dataset.state = state;
  // Rewriting the same text would make screen readers repeat it.
  if ($('status-text').textContent !== text) $('status-text').textContent = text;
}

function describeRole(role) {
  if (role === 'leader') return 'connected in this tab';
  if (role === 'follower') return 'relayed from another tab';
  return 'own connection';
}

function open(name, url, options) {
  const stream = new SharedEventSource(url, { ...options, onStatus: renderStatus });
  streams[name] = stream;
  return stream;
}

// -- numbers -----------------------------------------------------------------

const numberList = $('numbers');
const xs = [];
const ys = [];
// Wider steps than this between two numbers are drawn as a break in the line.
const maxStep = gapAfter(urls.tickerInterval);
let chart = null;

function drawChart() {
  // Copies (uPlot keeps the arrays it is given), with holes where no numbers came.
  chart.setData(withGaps(xs, [ys], maxStep));
}
const scheduleDraw = oncePerFrame(drawChart);

function addNumber({ number, t }) {
  xs.push(t);
  ys.push(number);
  if (xs.length > CHART_POINTS) {
    xs.splice(0, xs.length - CHART_POINTS);
    ys.splice(0, ys.length - CHART_POINTS);
  }
  const item = document.createElement('li');
  item.textContent = number.toFixed(3);
  item.style.setProperty('--level', String(number / 10));
  numberList.prepend(item);
  while (numberList.children.length > LIST_SIZE) numberList.lastElementChild.remove();
  scheduleDraw();
}

// -- clock -------------------------------------------------------------------

// The server sends its wall-clock time; it is shown in the one time format.
function setClock(text) {
  const clock = $('clock');
  const date = parseWallClock(text);
  clock.dateTime = String(text).trim().replace(' ', 'T');
  clock.textContent = date ? formatTime(date) : String(text);
  clock.title = String(text);
}

// -- who is here ---------------------------------------------------------------

// The people in the chat, each once however many tabs: `members` (the whole
// list, first on every connection), then `join` and `leave` as they come.
const here = new Set();
const hereList = $('here');
let ownName = $('chat-user').value;

function showHere() {
  const names = [...here].sort((a, b) => a.localeCompare(b));
  const items = names.map((name) => {
    const item = document.createElement('li');
    // Text, never markup: names are whatever people type.
    item.textContent = name;
    if (name === ownName) item.dataset.self = '';
    return item;
  });
  hereList.replaceChildren(...items);
  $('here-count').textContent = String(names.length);
}

function setMembers({ members }) {
  here.clear();
  for (const member of members) here.add(String(member.id));
  showHere();
}

function joined({ id }) {
  here.add(String(id));
  showHere();
}

function left({ id }) {
  here.delete(String(id));
  showHere();
}

// What a tab that opens later starts from (the leading tab's list).
function hereSnapshot() {
  const members = [...here].map((id) => ({ id, info: null }));
  return { type: 'members', data: JSON.stringify({ count: members.length, members }) };
}

// -- chat --------------------------------------------------------------------

const messages = $('messages');

function addMessage({ user, message, time }) {
  const nearBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
  const item = document.createElement('div');
  item.className = 'message';
  const head = document.createElement('div');
  head.className = 'meta';
  const who = document.createElement('span');
  who.className = 'user';
  who.textContent = String(user);
  head.append(who, ' ', timeElement(new Date(Number(time) * 1000)));
  const text = document.createElement('p');
  text.className = 'text';
  // Text, never markup: whatever anyone sends shows as typed.
  text.textContent = String(message);
  item.append(head, text);
  messages.append(item);
  while (messages.children.length > MAX_MESSAGES) messages.firstElementChild.remove();
  if (nearBottom) messages.scrollTop = messages.scrollHeight;
}

const form = $('chat-form');
const userField = $('chat-user');
const messageField = $('chat-message');
const sendButton = $('chat-send');
const errorBox = $('chat-error');

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = !text;
  messageField.setAttribute('aria-invalid', text ? 'true' : 'false');
}

async function send(event) {
  event.preventDefault();
  if (sendButton.disabled) return;
  const message = messageField.value;
  const user = userField.value;
  sendButton.disabled = true;
  try {
    const response = await fetch(urls.postUrl, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ message, user }),
    });
    if (response.ok) {
      showError('');
      messageField.value = '';
      const name = (await response.json().catch(() => null))?.user;
      if (typeof name === 'string' && name !== ownName) {
        // Another name in the session: the chat stream counts this visitor again,
        // under the new one.
        ownName = name;
        streams.chat.reconnect();
      }
    } else {
      let reason = `${response.status} ${response.statusText}`.trim();
      try {
        reason = (await response.json()).error || reason;
      } catch {
        // Not JSON (a proxy's page): the status line says enough.
      }
      showError(`Not sent: ${reason}`);
    }
  } catch {
    showError('Not sent: the server cannot be reached.');
  } finally {
    sendButton.disabled = false;
    messageField.focus();
  }
}

form.addEventListener('submit', send);
messageField.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

// -- start -------------------------------------------------------------------

$('chart-size').textContent = String(CHART_POINTS);
chart = makeChart($('chart'), [line('number', '--accent', { fill: true })], {
  height: 240,
  legend: false,
  cursor: false,
  y: { range: [0, 10] },
  ySize: 36,
  fine: true,
});
followWidth(chart, $('chart'));

open('numbers', urls.numbersUrl, { events: ['newnumber'], replay: CHART_POINTS })
  .addEventListener('newnumber', (e) => addNumber(JSON.parse(e.data)));
open('clock', urls.clockUrl, { replay: 1 })
  .addEventListener('message', (e) => setClock(e.data));
const chat = open('chat', urls.chatUrl, {
  events: ['message', 'members', 'join', 'leave'],
  replay: 50,
  snapshot: hereSnapshot,
});
chat.addEventListener('message', (e) => addMessage(JSON.parse(e.data)));
chat.addEventListener('members', (e) => setMembers(JSON.parse(e.data)));
chat.addEventListener('join', (e) => joined(JSON.parse(e.data)));
chat.addEventListener('leave', (e) => left(JSON.parse(e.data)));
renderStatus();

// For the console and for tests: the streams and the chart's own state.
window.live = {
  streams,
  chart,
  maxStep,
  points: () => ({ x: xs.slice(), y: ys.slice() }),
  here: () => [...here].sort(),
};
