// The generator page: session-bound character sets, the job form, and one
// job watched live (progress, strings, ending).

import { JobStatus } from './job-status.js';
import { GenerationStream } from './job-stream.js';
import { Toaster } from './toasts.js';
import { VirtualList } from './virtual-list.js';

const app = document.getElementById('app');
const urls = {
  generate: app.dataset.generateUrl,
  session: app.dataset.sessionUrl,
  jobs: app.dataset.jobsUrl,
};
const toaster = new Toaster(document.getElementById('toasts'));
const formatNumber = new Intl.NumberFormat('en').format;

// ---------------------------------------------------------------- session --

const charsets = document.getElementById('charsets');
const boxes = () => charsets.querySelectorAll('input[type=checkbox]');
// One request at a time, in click order, so quick toggles cannot cross.
let sessionQueue = Promise.resolve();

function showSelection(selection) {
  for (const box of boxes()) {
    if (box.name in selection) box.checked = Boolean(selection[box.name]);
  }
}

async function saveChoice(box, wanted) {
  charsets.setAttribute('aria-busy', 'true');
  try {
    const response = await fetch(urls.session, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ [box.name]: wanted ? 1 : 0 }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      showSelection(body.session);
      toaster.show(body.message, { kind: 'success' });
    } else {
      box.checked = !wanted;
      toaster.show(body.error || `The server answered ${response.status}.`, {
        kind: 'error',
        title: 'Not saved',
      });
    }
  } catch {
    box.checked = !wanted;
    toaster.show('The server cannot be reached; nothing was saved.', { kind: 'error' });
  } finally {
    charsets.removeAttribute('aria-busy');
  }
}

charsets.addEventListener('change', (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement)) return;
  const wanted = box.checked;
  sessionQueue = sessionQueue.then(() => saveChoice(box, wanted));
});

// A page restored from the back/forward cache may show an old selection.
window.addEventListener('pageshow', async (event) => {
  if (!event.persisted) return;
  try {
    const response = await fetch(urls.session, { headers: { Accept: 'application/json' } });
    if (response.ok) showSelection(await response.json());
  } catch {
    // The next change will tell the user if the server is gone.
  }
});

// ------------------------------------------------------------------- form --

const form = document.getElementById('generate-form');
// namedItem(), since `form.elements.length` is the collection's size, not the field.
const fields = ['amount', 'length', 'delay_ms'].map((name) => form.elements.namedItem(name));
const generateButton = document.getElementById('generate');
const cancelButton = document.getElementById('cancel');
let attempted = false;

function fieldLabel(input) {
  return input.labels[0].firstChild.textContent.trim();
}

// The limits are the input's own min/max, which the template fills from the
// server's configuration: one source for both sides.
function problemWith(input) {
  const raw = input.value.trim();
  const label = fieldLabel(input);
  if (input.validity.badInput) return `${label} must be a whole number.`;
  if (raw === '') return input.required ? `${label} is required.` : null;
  if (!/^\d+$/.test(raw)) return `${label} must be a whole number.`;
  const value = Number(raw);
  const min = Number(input.min);
  const max = Number(input.max);
  if (value < min || value > max) {
    return `${label} must be between ${formatNumber(min)} and ${formatNumber(max)}.`;
  }
  return null;
}

function showProblem(input, message) {
  const note = document.getElementById(`${input.name}-error`);
  note.textContent = message || '';
  note.hidden = !message;
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}

function validate() {
  let firstBad = null;
  for (const input of fields) {
    const problem = problemWith(input);
    showProblem(input, problem);
    if (problem && !firstBad) firstBad = input;
  }
  return firstBad;
}

form.addEventListener('input', (event) => {
  const input = event.target;
  if (attempted && fields.includes(input)) showProblem(input, problemWith(input));
});

form.addEventListener('submit', (event) => {
  event.preventDefault();
  if (running) return;
  attempted = true;
  const bad = validate();
  if (bad) {
    bad.focus();
    return;
  }
  const params = new URLSearchParams();
  for (const input of fields) {
    if (input.value.trim() !== '') params.set(input.name, String(Number(input.value)));
  }
  start(params);
});

// -------------------------------------------------------------------- job --

const statusBadge = document.getElementById('status');
const progress = document.getElementById('progress');
const progressbar = document.getElementById('progressbar');
const progressFill = document.getElementById('progress-fill');
const progressPercent = document.getElementById('progress-percent');
const countLabel = document.getElementById('count');
const download = document.getElementById('download');
const results = document.getElementById('results');
const empty = document.getElementById('results-empty');

const OUTAGE_MS = 2000;
const MISSED = '… (missed here; the download has it)';
let strings = [];
const list = new VirtualList(results, (i) => strings[i] ?? MISSED);
let stream = null;
let running = false;
let amount = 0;
let percent = 0;
let droppedAt = 0;
let frame = 0;

function setStatus(state, text) {
  statusBadge.dataset.state = state;
  statusBadge.textContent = text;
  progress.dataset.state = state;
}

// Events can arrive by the thousand per frame: they only touch arrays, and
// the DOM follows once per animation frame.
function scheduleRender() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  const received = strings.length;
  progressbar.setAttribute('aria-valuenow', String(percent));
  progressbar.setAttribute(
    'aria-valuetext',
    amount
      ? `${percent}%, ${formatNumber(received)} of ${formatNumber(amount)} strings`
      : `${percent}%`,
  );
  progressFill.style.transform = `scaleX(${percent / 100})`;
  progressPercent.textContent = `${percent}%`;
  countLabel.textContent = amount
    ? `${formatNumber(received)} of ${formatNumber(amount)} strings`
    : 'No strings yet.';
  results.dataset.count = String(received);
  empty.hidden = received > 0;
  list.update(received);
}

// On a narrow screen the results sit below the form, partly or wholly out of
// sight, and a toast takes room at the bottom (see base.css): bring the result
// box into view, whole, with its card if the card fits.
function revealResults() {
  const card = document.getElementById('results-card');
  const page = card.closest('main');
  const scrolls = getComputedStyle(page).overflowY === 'auto';
  const view = scrolls ? page.getBoundingClientRect() : { top: 0, bottom: window.innerHeight };
  if (results.getBoundingClientRect().bottom <= view.bottom + 1) return;
  const still = matchMedia('(prefers-reduced-motion: reduce)').matches;
  const whole = card.getBoundingClientRect().height <= view.bottom - view.top;
  (whole ? card : results).scrollIntoView({ block: 'end', behavior: still ? 'auto' : 'smooth' });
}

function setRunning(value) {
  running = value;
  generateButton.disabled = value;
  cancelButton.disabled = !value;
  form.setAttribute('aria-busy', String(value));
}

// The job being watched, kept for this tab: a reload resumes watching it
// (the server replays its strings) instead of leaving it orphaned.
const SAVED = 'generator.job';

function remember(job, params) {
  try {
    if (job) sessionStorage.setItem(SAVED, JSON.stringify({ job, params: String(params) }));
    else sessionStorage.removeItem(SAVED);
  } catch {
    // Storage can be off or full; resuming after a reload is a bonus.
  }
}

function start(params, resume = null) {
  stream?.stop();
  strings = [];
  amount = Number(params.get('amount'));
  percent = 0;
  droppedAt = 0;
  download.hidden = true;
  list.reset();
  setRunning(true);
  setStatus(JobStatus.RUNNING, 'Starting…');
  scheduleRender();
  revealResults();

  stream = new GenerationStream(`${urls.generate}?${params}`, urls.jobs, {
    job(id) {
      remember(id, params);
      download.href = `${urls.jobs}/${encodeURIComponent(id)}/result`;
      download.hidden = false;
    },
    item(data) {
      // Indexes are 1-based and arrive in order; after a gap the missing
      // ones are kept as holes so every line keeps its number.
      while (strings.length < data.index - 1) strings.push(null);
      if (data.index === strings.length + 1) strings.push(data.generated_string);
      amount = data.amount;
      percent = data.progress;
      scheduleRender();
    },
    gap(info) {
      const seq = (id) => Number(String(id).split(':').pop());
      const from = seq(info.last_event_id) + 1;
      const to = seq(info.resumed_from) - 1;
      const which = to >= from
        ? `Strings ${formatNumber(from)} to ${formatNumber(to)}`
        : 'Some strings';
      toaster.show(
        `${which} are no longer kept for replay, so they are missing here. ` +
          'The download has them all.',
        { kind: 'warning', title: 'Missed strings' },
      );
    },
    status(state) {
      if (state === 'reconnecting') {
        droppedAt ||= performance.now();
        setStatus('reconnecting', 'Reconnecting…');
      } else if (state === 'open') {
        setStatus(JobStatus.RUNNING, 'Streaming');
        // Streams are ended on purpose now and then (server restarts,
        // rebalancing) and resume at once: only a noticeable outage is news.
        if (droppedAt && performance.now() - droppedAt > OUTAGE_MS) {
          toaster.show(`Reconnected; resuming after string ${formatNumber(strings.length)}.`);
        }
        droppedAt = 0;
      }
    },
    end(type, data) {
      setRunning(false);
      remember(null);
      if (type === JobStatus.DONE) {
        percent = 100;
        setStatus(JobStatus.DONE, 'Done');
        toaster.show(data.message || 'Done.', { kind: 'success', title: 'Job done' });
        revealResults();
      } else {
        const made = Number.isInteger(data.produced)
          ? ` ${formatNumber(data.produced)} of ${formatNumber(amount)} strings were made;` +
            ' the download has them.'
          : '';
        const failed = type === JobStatus.FAILED;
        setStatus(type, failed ? 'Failed' : 'Cancelled');
        toaster.show(`${data.message || `Job ${type}.`}${made}`, {
          kind: failed ? 'error' : 'warning',
          title: failed ? 'Failed' : 'Cancelled',
        });
      }
      scheduleRender();
    },
    refused({ status, error, field, retryAfter }) {
      setRunning(false);
      remember(null);
      amount = 0;
      scheduleRender();
      setStatus(JobStatus.FAILED, 'Not started');
      const input = fields.find((candidate) => candidate.name === field);
      if (input) {
        showProblem(input, error);
        input.focus();
      }
      const busy = retryAfter && (status === 429 || status === 503);
      const text = busy
        ? `${error.replace(/[^.!?]$/, '$&.')} Try again in ${retryAfter} s.`
        : error;
      toaster.show(text, { kind: 'error', title: 'Job not started' });
    },
    lost(message) {
      setRunning(false);
      remember(null);
      setStatus(JobStatus.FAILED, 'Disconnected');
      toaster.show(message, { kind: 'error', title: 'Stream lost' });
    },
  }, resume);
}

cancelButton.addEventListener('click', async () => {
  if (!running || !stream) return;
  cancelButton.disabled = true;
  if (stream.job === null) {
    // Nothing has come back yet, so there is no job to cancel by id: stop
    // watching, and a job the server did start is cancelled once orphaned.
    stream.finish(JobStatus.CANCELLED, { message: 'Stopped before the job started.' });
    return;
  }
  try {
    const response = await fetch(`${urls.jobs}/${encodeURIComponent(stream.job)}`, {
      method: 'DELETE',
      headers: { Accept: 'application/json' },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      toaster.show(body.error || `The server answered ${response.status}.`, {
        kind: 'error',
        title: 'Not cancelled',
      });
      cancelButton.disabled = !running;
    } else if (!stream.connected && body.status !== JobStatus.RUNNING) {
      // Connected, the stream brings the `cancelled` event itself; otherwise
      // the answer is all there is to say how the job ended.
      stream.finish(body.status, body);
    }
  } catch {
    toaster.show('The server cannot be reached; the job was not cancelled.', { kind: 'error' });
    cancelButton.disabled = !running;
  }
});

function resumeSaved() {
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(SAVED) || 'null');
  } catch {
    return false;
  }
  if (!saved?.job || !saved.params) return false;
  const params = new URLSearchParams(saved.params);
  for (const input of fields) input.value = params.get(input.name) ?? '';
  start(params, saved.job);
  toaster.show('Watching again the job this tab started before it was reloaded.');
  return true;
}

if (!resumeSaved()) scheduleRender();
