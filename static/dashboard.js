// The dashboard: live charts fed by the stats stream, and the job history from the API.
import { dots, followWidth, gapAfter, line, makeChart, oncePerFrame, withGaps } from './charts.js';
import { JobStatus, TERMINAL } from './job-status.js';
import { SharedEventSource } from './shared-stream.js';
import { formatTime, timeElement } from './time.js';

// Ten minutes at one event a second. However long the page stays open, the
// charts hold at most this many points (the oldest go first).
const MAX_POINTS = 600;
const HISTORY_CHART_JOBS = 100;
const PER_PAGE = 20;
// Reload the history at most this often while jobs keep finishing.
const HISTORY_RELOAD_MS = 2000;
// How long after a job finishes the history keeps being reloaded.
const HISTORY_CATCH_UP_MS = 5000;
const KINDS = ['job', 'numbers', 'clock', 'chat', 'channel', 'stats'];
// The colour token of each terminal status in the history chart (the badges' colours).
const STATUS_COLOURS = {
  [JobStatus.DONE]: '--success',
  [JobStatus.CANCELLED]: '--warning',
  [JobStatus.FAILED]: '--danger',
};

const urls = document.body.dataset;
const $ = (id) => document.getElementById(id);
const integer = new Intl.NumberFormat();
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
// Wider steps than this between two stats events are drawn as a break in the lines.
const maxStep = gapAfter(urls.statsInterval);

// -- live series ----------------------------------------------------------------

const live = {
  t: [],
  events: [],
  total: [],
  kinds: Object.fromEntries(KINDS.map((kind) => [kind, []])),
  jobsPerMin: [],
  running: [],
};
let lastTime = 0;
let latest = null;

function allSeries() {
  return [live.t, live.events, live.total, ...Object.values(live.kinds), live.jobsPerMin, live.running];
}

function addStats(stats) {
  // A reconnect (or a tab joining) replays recent events: keep time moving forward.
  if (!(stats.time > lastTime)) return;
  lastTime = stats.time;
  latest = stats;
  live.t.push(stats.time);
  live.events.push(stats.events_per_s);
  live.total.push(stats.open_streams_total);
  for (const kind of KINDS) live.kinds[kind].push(stats.open_streams[kind] ?? 0);
  live.jobsPerMin.push(stats.jobs_per_min);
  live.running.push(stats.running_jobs);
  const extra = live.t.length - MAX_POINTS;
  if (extra > 0) for (const values of allSeries()) values.splice(0, extra);
  showNow(stats);
  scheduleDraw();
  if (stats.jobs_finished !== seenFinished) {
    seenFinished = stats.jobs_finished;
    historyFreshUntil = performance.now() + HISTORY_CATCH_UP_MS;
  }
  // The history is written to the database a moment after a job finishes:
  // keep reloading (at most every HISTORY_RELOAD_MS) for a while after.
  if (performance.now() < historyFreshUntil) scheduleHistory();
}

// -- charts ---------------------------------------------------------------------

// Whole seconds and up: the stats come about once a second.
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];

// A little room at both ends, so that points on the edges show whole.
function padded(_u, min, max) {
  const pad = Math.max((max - min) * 0.03, 1);
  return [min - pad, max + pad];
}

function fromZero(_u, _min, max) {
  return [0, Math.max(1, Math.ceil((max || 0) * 1.15))];
}

const palette = ['--s2', '--s3', '--s4', '--s5', '--s6', '--s7'];
const charts = {};

function draw() {
  // Copies (uPlot keeps the arrays it is given), with holes where no stats came.
  charts.events.setData(withGaps(live.t, [live.events], maxStep));
  charts.streams.setData(withGaps(live.t, [live.total, ...KINDS.map((kind) => live.kinds[kind])], maxStep));
  charts.jobs.setData(withGaps(live.t, [live.jobsPerMin, live.running], maxStep));
}
const scheduleDraw = oncePerFrame(draw);

// -- "now" ----------------------------------------------------------------------

function showNow(stats) {
  for (const cell of document.querySelectorAll('[data-stat]')) {
    const value = stats[cell.dataset.stat];
    const text = typeof value === 'number' ? (Number.isInteger(value) ? integer.format(value) : decimal.format(value)) : '–';
    if (cell.textContent !== text) cell.textContent = text;
  }
  $('now-time').textContent = `at ${formatTime(new Date(stats.time * 1000))}`;
  setLatest('events', `${decimal.format(stats.events_per_s)} events per second`);
  const kinds = KINDS.filter((kind) => stats.open_streams[kind]).map((kind) => `${kind} ${stats.open_streams[kind]}`);
  setLatest('streams', `${integer.format(stats.open_streams_total)}${kinds.length ? ` (${kinds.join(', ')})` : ''}`);
  setLatest('jobs', `${integer.format(stats.jobs_per_min)} finished in the last minute, ${integer.format(stats.running_jobs)} running`);
  showSubscribers(stats.subscribers);
  if (stats.presence) showPresence(stats.presence);
}

function setLatest(name, text) {
  const cell = document.querySelector(`[data-latest="${name}"]`);
  if (cell.textContent !== text) cell.textContent = text;
}

let shownSubscribers = '';

function showSubscribers(subscribers) {
  const key = JSON.stringify(subscribers);
  if (key === shownSubscribers) return;
  shownSubscribers = key;
  const body = $('subscribers');
  const rows = Object.entries(subscribers).sort(([a], [b]) => a.localeCompare(b));
  body.replaceChildren(
    ...(rows.length
      ? rows.map(([name, count]) => row([cell(name), cell(integer.format(count), 'num')]))
      : [row([cell('None', 'empty', 2)])]),
  );
}

let shownPresence = '';

// The busiest presence channels (and the chat): members each once, connections.
function showPresence(presence) {
  const key = JSON.stringify(presence);
  if (key === shownPresence) return;
  shownPresence = key;
  for (const item of document.querySelectorAll('[data-presence]')) {
    item.textContent = integer.format(presence[item.dataset.presence] ?? 0);
  }
  const rows = presence.channels.map((channel) =>
    row([cell(channel.channel), cell(integer.format(channel.members), 'num'), cell(integer.format(channel.connections), 'num')]),
  );
  $('presence-channels').replaceChildren(...(rows.length ? rows : [row([cell('None', 'empty', 3)])]));
}

function cell(content, className = '', colspan = 1) {
  const td = document.createElement('td');
  if (className) td.className = className;
  if (colspan > 1) td.colSpan = colspan;
  // Text, never markup: channel names and messages come from users.
  if (content instanceof Node) td.append(content);
  else td.textContent = String(content);
  return td;
}

function row(cells) {
  const tr = document.createElement('tr');
  tr.append(...cells);
  return tr;
}

// -- connection status ------------------------------------------------------------

function showStatus({ state }) {
  const texts = {
    connecting: 'Connecting…',
    open: 'Live',
    reconnecting: 'Reconnecting…',
    closed: 'Disconnected',
  };
  $('status').dataset.state = state;
  const text = texts[state] || state;
  // Rewriting the same text would make screen readers repeat it.
  if ($('status-text').textContent !== text) $('status-text').textContent = text;
}

// -- job history ------------------------------------------------------------------

// Pages by cursor: cursors[i] opens page i + 1 (null: the newest); next opens the one after.
const history = { page: 1, cursors: [null], next: null, status: '', items: [], recent: [], loads: 0 };
let seenFinished = null;
let historyFreshUntil = 0;
let historyTimer = 0;
let historyBusy = false;
let historyAgain = false;
let lastHistoryLoad = 0;

function scheduleHistory() {
  if (historyTimer) return;
  const wait = Math.max(0, lastHistoryLoad + HISTORY_RELOAD_MS - performance.now());
  historyTimer = setTimeout(() => {
    historyTimer = 0;
    loadHistory();
  }, wait);
}

async function getContent(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' } });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's error page): the status line says enough.
  }
  if (!response.ok || !body || !body.success) {
    throw new Error(body?.message || `${response.status} ${response.statusText}`.trim());
  }
  return body.content;
}

async function loadHistory() {
  if (historyBusy) {
    historyAgain = true;
    return;
  }
  historyBusy = true;
  lastHistoryLoad = performance.now();
  try {
    const query = new URLSearchParams({ limit: String(PER_PAGE) });
    const cursor = history.cursors[history.page - 1];
    if (cursor) query.set('cursor', cursor);
    if (history.status) query.set('status', history.status);
    const [page, recent] = await Promise.all([
      getContent(`${urls.jobsUrl}?${query}`),
      getContent(`${urls.jobsUrl}?limit=${HISTORY_CHART_JOBS}`),
    ]);
    Object.assign(history, { next: page.next_cursor, items: page.items, recent: recent.items });
    history.loads += 1;
    showHistoryError('');
    renderTable();
    renderHistoryChart();
  } catch (error) {
    showHistoryError(`The job history could not be loaded: ${error.message}`);
  } finally {
    historyBusy = false;
    if (historyAgain) {
      historyAgain = false;
      scheduleHistory();
    }
  }
}

function showHistoryError(text) {
  const box = $('history-error');
  if (box.textContent !== text) box.textContent = text;
  box.hidden = !text;
}

function duration(seconds) {
  if (seconds == null) return '–';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  return `${decimal.format(seconds)} s`;
}

function timeCell(seconds) {
  return timeElement(new Date(seconds * 1000));
}

function renderTable() {
  const body = $('history-rows');
  if (!history.items.length) {
    body.replaceChildren(row([cell(history.page > 1 ? 'No jobs on this page.' : 'No finished jobs yet.', 'empty', 6)]));
  } else {
    body.replaceChildren(
      ...history.items.map((job) => {
        const badge = document.createElement('span');
        badge.className = 'badge';
        badge.dataset.status = job.status;
        badge.textContent = job.status;
        const strings = job.produced === job.amount ? integer.format(job.amount) : `${integer.format(job.produced)} of ${integer.format(job.amount)}`;
        return row([
          cell(timeCell(job.finished_at)),
          cell(badge),
          cell(strings, 'num'),
          cell(integer.format(job.length), 'num'),
          cell(duration(job.duration_s), 'num'),
          cell(job.message),
        ]);
      }),
    );
  }
  $('page-info').textContent = `Page ${history.page}`;
  $('page-prev').disabled = history.page <= 1;
  $('page-next').disabled = !history.next;
}

function renderHistoryChart() {
  // Oldest first: uPlot wants x ascending. One series per status, points only.
  const jobs = history.recent.slice().sort((a, b) => a.finished_at - b.finished_at);
  const x = jobs.map((job) => job.finished_at);
  const ys = TERMINAL.map((status) => jobs.map((job) => (job.status === status ? job.duration_s : null)));
  charts.history.setData([x, ...ys]);
  setLatest('history', String(jobs.length));
}

function goToPage(page) {
  if (page === 1) history.cursors = [null];
  else if (page > history.cursors.length) history.cursors.push(history.next);
  history.page = page;
  loadHistory();
}

$('page-prev').addEventListener('click', () => goToPage(Math.max(1, history.page - 1)));
$('page-next').addEventListener('click', () => {
  if (history.next) goToPage(history.page + 1);
});
$('status-filter').addEventListener('change', (event) => {
  history.status = event.target.value;
  goToPage(1);
});

// -- start ----------------------------------------------------------------------

const timeSteps = { incrs: TIME_STEPS };
charts.events = makeChart($('chart-events'), [line('events/s', '--s1', { fill: true })], {
  ...timeSteps,
  legend: false,
  y: { range: fromZero },
});
charts.streams = makeChart($('chart-streams'), [
  line('all', '--s1', { width: 2.5 }),
  ...KINDS.map((kind, i) => line(kind, palette[i % palette.length], { width: 1.5 })),
], { ...timeSteps, y: { range: fromZero } });
charts.jobs = makeChart($('chart-jobs'), [
  line('finished in the last minute', '--s3', { fill: true }),
  line('running', '--s2', { dash: [6, 4] }),
], { ...timeSteps, y: { range: fromZero } });
charts.history = makeChart($('chart-history'), TERMINAL.map((status) => dots(status, STATUS_COLOURS[status])), {
  ...timeSteps,
  cursorPoints: true,
  x: { range: padded },
  y: { range: fromZero },
  ySize: 68,
  yValues: (_u, splits) => splits.map((s) => duration(s)),
});
for (const [name, box] of Object.entries({ events: 'chart-events', streams: 'chart-streams', jobs: 'chart-jobs', history: 'chart-history' })) {
  followWidth(charts[name], $(box));
}

// The history table scrolls sideways where it is wider than its box (a phone):
// the hint under it says so only then.
const historyScroll = $('history-scroll');
const scrollHint = new ResizeObserver(() => {
  $('history-scroll-hint').hidden = historyScroll.scrollWidth <= historyScroll.clientWidth + 1;
});
scrollHint.observe(historyScroll);
scrollHint.observe(historyScroll.firstElementChild);

const stream = new SharedEventSource(urls.statsUrl, { replay: 120, onStatus: showStatus });
stream.addEventListener('message', (event) => addStats(JSON.parse(event.data)));
loadHistory();

// For the console and for tests: the stream, the charts and what they hold.
window.dashboard = {
  stream,
  charts,
  history,
  latest: () => latest,
  points: () => ({ t: live.t.slice(), events: live.events.slice(), total: live.total.slice() }),
  maxPoints: MAX_POINTS,
  maxStep,
};
