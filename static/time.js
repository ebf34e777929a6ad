// One way to show a time on every page: the viewer's locale, with a 12- or
// 24-hour clock as that locale has it, hours, minutes and seconds.

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const clockMs = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  fractionalSecondDigits: 3,
});
const day = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

/** "08:31:55" or "08:31:55 AM", as the viewer's locale writes it. */
export function formatTime(date) {
  return clock.format(date);
}

/** The same, with milliseconds: for chart axes whose ticks are under a second apart. */
export function formatTimeFine(date) {
  return clockMs.format(date);
}

/** The time alone for today; the date before it on any other day. */
export function formatDateTime(date, now = new Date()) {
  const sameDay = date.toDateString() === now.toDateString();
  return sameDay ? formatTime(date) : `${day.format(date)}, ${formatTime(date)}`;
}

/** A <time> element whose text is formatDateTime() and whose datetime is exact. */
export function timeElement(date, { withDate = true } = {}) {
  const element = document.createElement('time');
  if (!Number.isNaN(date.getTime())) {
    element.dateTime = date.toISOString();
    element.textContent = withDate ? formatDateTime(date) : formatTime(date);
  }
  return element;
}

/**
 * The server's wall-clock text "YYYY-MM-DD HH:MM:SS" as a Date with the same
 * wall-clock fields here, so that formatting it shows the server's time of
 * day (not converted into the viewer's time zone). null if it is not that shape.
 */
export function parseWallClock(text) {
  const match = /^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)$/.exec(String(text).trim());
  if (!match) return null;
  const [year, month, dayOfMonth, hours, minutes, seconds] = match.slice(1).map(Number);
  return new Date(year, month - 1, dayOfMonth, hours, minutes, seconds);
}
