// The live page: the ticker (list and chart), the clock, and the chat.
import { SharedEventSource } from './shared-stream.js';

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
let chart = null;
let drawQueued = false;

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

const hms = uPlot.fmtDate('{HH}:{mm}:{ss}');
const hmsFraction = uPlot.fmtDate('{HH}:{mm}:{ss}.{fff}');

// One row of local times: uPlot's default adds a date row that the edge clips.
function timeLabels(_u, splits, _axis, _space, increment) {
  const format = increment < 1 ? hmsFraction : hms;
  return splits.map((seconds) => format(new Date(seconds * 1000)));
}

function makeChart() {
  const box = $('chart');
  const ink = cssVar('--muted');
  const grid = cssVar('--grid');
  const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  return new uPlot(
    {
      width: Math.max(box.clientWidth, 200),
      height: 240,
      legend: { show: false },
      cursor: { show: false },
      scales: { x: { time: true }, y: { range: [0, 10] } },
      // Wide enough apart that HH:MM:SS(.fff) labels never overlap.
      axes: [{ ...axis, values: timeLabels, space: 110 }, { ...axis, size: 36 }],
      series: [
        {},
        {
          label: 'number',
          stroke: cssVar('--accent'),
          fill: cssVar('--accent-fill'),
          width: 2,
          points: { show: false },
        },
      ],
    },
    [[], []],
    box,
  );
}

function drawChart() {
  drawQueued = false;
  // Copies: uPlot keeps the arrays it is given, and these keep changing.
  chart.setData([xs.slice(), ys.slice()]);
}

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
  // One redraw per frame however fast numbers come, and none in a hidden tab.
  if (!drawQueued) {
    drawQueued = true;
    requestAnimationFrame(drawChart);
  }
}

// -- clock -------------------------------------------------------------------

function setClock(text) {
  const clock = $('clock');
  clock.textContent = text;
  clock.dateTime = text.replace(' ', 'T');
}

// -- chat --------------------------------------------------------------------

const messages = $('messages');
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

function addMessage({ user, message, time }) {
  const nearBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
  const item = document.createElement('li');
  const head = document.createElement('div');
  head.className = 'meta';
  const who = document.createElement('span');
  who.className = 'user';
  who.textContent = String(user);
  const when = document.createElement('time');
  const date = new Date(Number(time) * 1000);
  if (!Number.isNaN(date.getTime())) {
    when.dateTime = date.toISOString();
    when.textContent = timeFormat.format(date);
  }
  head.append(who, ' ', when);
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
chart = makeChart();
new ResizeObserver(([entry]) => {
  const width = Math.floor(entry.contentRect.width);
  if (width > 0 && width !== chart.width) chart.setSize({ width, height: chart.height });
}).observe($('chart'));

open('numbers', urls.numbersUrl, { events: ['newnumber'], replay: CHART_POINTS })
  .addEventListener('newnumber', (e) => addNumber(JSON.parse(e.data)));
open('clock', urls.clockUrl, { replay: 1 })
  .addEventListener('message', (e) => setClock(e.data));
open('chat', urls.chatUrl, { replay: 50 })
  .addEventListener('message', (e) => addMessage(JSON.parse(e.data)));
renderStatus();

// For the console and for tests: the streams and the chart's own state.
window.live = { streams, chart, points: () => ({ x: xs.slice(), y: ys.slice() }) };
