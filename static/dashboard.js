// The dashboard: live charts fed by the stats stream, and the job history from the API.
import { SharedEventSource } from './shared-stream.js';

// Ten minutes at one event a second. However long the page stays open, the
// charts hold at most this many points (the oldest go first).
const MAX_POINTS = 600;
const HISTORY_CHART_JOBS = 100;
const PER_PAGE = 20;
// Reload the history at most this often while jobs keep finishing.
const HISTORY_RELOAD_MS = 2000;
const KINDS = ['job', 'numbers', 'clock', 'chat', 'channel', 'stats'];
const STATUSES = ['done', 'cancelled', 'failed'];

const urls = document.body.dataset;
const $ = (id) => document.getElementById(id);
const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const integer = new Intl.NumberFormat();
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const clockTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });

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
    scheduleHistory();
  }
}

// -- charts ---------------------------------------------------------------------

const hms = uPlot.fmtDate('{HH}:{mm}:{ss}');
// Whole seconds and up: the stats come once a second.
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];

// One row of local times: uPlot's default adds a date row that the edge clips.
function timeLabels(_u, splits) {
  return splits.map((seconds) => hms(new Date(seconds * 1000)));
}

// A little room at both ends, so that points on the edges show whole.
function padded(_u, min, max) {
  const pad = Math.max((max - min) * 0.03, 1);
  return [min - pad, max + pad];
}

function fromZero(_u, _min, max) {
  return [0, Math.max(1, Math.ceil((max || 0) * 1.15))];
}

function makeChart(box, series, { legend = true, points = false, yValues = undefined, pad = false } = {}) {
  const ink = cssVar('--muted');
  const grid = cssVar('--grid');
  const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  return new uPlot(
    {
      width: Math.max(box.clientWidth, 200),
      height: 220,
      legend: { show: legend, live: false },
      cursor: { points: { show: points } },
      scales: { x: { time: true, ...(pad ? { range: padded } : {}) }, y: { range: fromZero } },
      axes: [{ ...axis, values: timeLabels, incrs: TIME_STEPS, space: 70 }, { ...axis, size: yValues ? 68 : 52, ...(yValues ? { values: yValues } : {}) }],
      series: [{}, ...series],
    },
    [[], ...series.map(() => [])],
    box,
  );
}

function line(label, colour, { fill = false, width = 2, dash = null } = {}) {
  return {
    label,
    stroke: cssVar(colour),
    width,
    ...(fill ? { fill: cssVar('--accent-fill') } : {}),
    ...(dash ? { dash } : {}),
    points: { show: false },
  };
}

const palette = ['--s2', '--s3', '--s4', '--s5', '--s6', '--s7'];
const charts = {};
let drawQueued = false;

function scheduleDraw() {
  // One redraw per frame however fast events come, and none in a hidden tab.
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(draw);
}

function draw() {
  drawQueued = false;
  // Copies: uPlot keeps the arrays it is given, and these keep changing.
  const t = live.t.slice();
  charts.events.setData([t, live.events.slice()]);
  charts.streams.setData([t, live.total.slice(), ...KINDS.map((kind) => live.kinds[kind].slice())]);
  charts.jobs.setData([t, live.jobsPerMin.slice(), live.running.slice()]);
}

function watchSize(chart, box) {
  new ResizeObserver(([entry]) => {
    const width = Math.floor(entry.contentRect.width);
    if (width > 0 && width !== chart.width) chart.setSize({ width, height: chart.height });
  }).observe(box);
}

// -- "now" ----------------------------------------------------------------------

function showNow(stats) {
  for (const cell of document.querySelectorAll('[data-stat]')) {
    const value = stats[cell.dataset.stat];
    const text = typeof value === 'number' ? (Number.isInteger(value) ? integer.format(value) : decimal.format(value)) : '–';
    if (cell.textContent !== text) cell.textContent = text;
  }
  $('now-time').textContent = `at ${clockTime.format(new Date(stats.time * 1000))}`;
  setLatest('events', `${decimal.format(stats.events_per_s)} events per second`);
  const kinds = KINDS.filter((kind) => stats.open_streams[kind]).map((kind) => `${kind} ${stats.open_streams[kind]}`);
  setLatest('streams', `${integer.format(stats.open_streams_total)}${kinds.length ? ` (${kinds.join(', ')})` : ''}`);
  setLatest('jobs', `${integer.format(stats.jobs_per_min)} finished in the last minute, ${integer.format(stats.running_jobs)} running`);
  showSubscribers(stats.subscribers);
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

const history = { page: 1, pages: 0, total: 0, status: '', items: [], recent: [], loads: 0 };
let seenFinished = null;
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
    const query = new URLSearchParams({ page: String(history.page), per_page: String(PER_PAGE) });
    if (history.status) query.set('status', history.status);
    const [page, recent] = await Promise.all([
      getContent(`${urls.jobsUrl}?${query}`),
      getContent(`${urls.jobsUrl}?per_page=${HISTORY_CHART_JOBS}`),
    ]);
    Object.assign(history, { pages: page.pages, total: page.total, items: page.items, recent: recent.items });
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
  const when = document.createElement('time');
  const date = new Date(seconds * 1000);
  when.dateTime = date.toISOString();
  when.textContent = dateTime.format(date);
  return when;
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
  const pages = Math.max(1, history.pages);
  $('page-info').textContent = `Page ${history.page} of ${pages} (${integer.format(history.total)} jobs)`;
  $('page-prev').disabled = history.page <= 1;
  $('page-next').disabled = history.page >= pages;
}

function renderHistoryChart() {
  // Oldest first: uPlot wants x ascending. One series per status, points only.
  const jobs = history.recent.slice().sort((a, b) => a.finished_at - b.finished_at);
  const x = jobs.map((job) => job.finished_at);
  const ys = STATUSES.map((status) => jobs.map((job) => (job.status === status ? job.duration_s : null)));
  charts.history.setData([x, ...ys]);
  setLatest('history', String(jobs.length));
}

function points(label, colour) {
  return {
    label,
    stroke: cssVar(colour),
    fill: cssVar(colour),
    paths: () => null,
    points: { show: true, size: 7, fill: cssVar(colour) },
  };
}

function goToPage(page) {
  history.page = page;
  loadHistory();
}

$('page-prev').addEventListener('click', () => goToPage(Math.max(1, history.page - 1)));
$('page-next').addEventListener('click', () => goToPage(history.page + 1));
$('status-filter').addEventListener('change', (event) => {
  history.status = event.target.value;
  goToPage(1);
});

// -- start ----------------------------------------------------------------------

charts.events = makeChart($('chart-events'), [line('events/s', '--s1', { fill: true })], { legend: false });
charts.streams = makeChart($('chart-streams'), [
  line('all', '--s1', { width: 2.5 }),
  ...KINDS.map((kind, i) => line(kind, palette[i % palette.length], { width: 1.5 })),
]);
charts.jobs = makeChart($('chart-jobs'), [
  line('finished in the last minute', '--s3', { fill: true }),
  line('running', '--s2', { dash: [6, 4] }),
]);
charts.history = makeChart($('chart-history'), [
  points('done', '--ok'),
  points('cancelled', '--warn'),
  points('failed', '--bad'),
], { points: true, pad: true, yValues: (_u, splits) => splits.map((s) => duration(s)) });
for (const [name, box] of Object.entries({ events: 'chart-events', streams: 'chart-streams', jobs: 'chart-jobs', history: 'chart-history' })) {
  watchSize(charts[name], $(box));
}

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
};
