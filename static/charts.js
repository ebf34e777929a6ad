// Chart helpers shared by the live page and the dashboard, on uPlot (vendored,
// loaded as a global by the page before its module runs).
/* global uPlot */

import { formatTime, formatTimeFine } from './time.js';

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// uPlot's axis font: labels are measured in it so that they never overlap.
const AXIS_FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif';
const LABEL_GAP_PX = 28;

function textWidth(text) {
  const context = document.createElement('canvas').getContext('2d');
  context.font = AXIS_FONT;
  return Math.ceil(context.measureText(text).width);
}

/**
 * An x axis of local times in the one time format of every page (time.js),
 * on one row (uPlot's default adds a date row that the edge clips). With
 * `fine`, ticks under a second apart show milliseconds.
 */
function timeAxis({ fine = false, incrs = undefined } = {}) {
  // A wide sample (two-digit everything, an AM/PM marker where the locale has one).
  const sample = new Date(2000, 0, 1, 22, 58, 58, 888);
  const width = textWidth((fine ? formatTimeFine : formatTime)(sample));
  return {
    space: width + LABEL_GAP_PX,
    // Room on the right for half a label: the last one is centred on its tick.
    edge: Math.ceil(width / 2) + 4,
    ...(incrs ? { incrs } : {}),
    values: (_u, splits, _axis, _space, increment) => {
      const format = fine && increment < 1 ? formatTimeFine : formatTime;
      return splits.map((seconds) => format(new Date(seconds * 1000)));
    },
  };
}

/**
 * A time chart in the product's colours.
 *
 * series: uPlot series options for the y values (see line() and dots()).
 * options: height, legend, cursorPoints (a dot where the cursor is), x and y
 * (uPlot scale options), yValues and ySize (the y axis labels and width),
 * fine and incrs (see timeAxis()).
 */
export function makeChart(box, series, {
  height = 220,
  legend = true,
  cursor = true,
  cursorPoints = false,
  x = {},
  y = {},
  yValues = undefined,
  ySize = 52,
  fine = false,
  incrs = undefined,
} = {}) {
  const ink = cssVar('--muted');
  const grid = cssVar('--grid');
  const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  const { edge, ...xAxis } = timeAxis({ fine, incrs });
  return new uPlot(
    {
      width: Math.max(box.clientWidth, 200),
      height,
      // null: uPlot's own padding on that side.
      padding: [null, edge, null, null],
      legend: { show: legend, live: false },
      cursor: cursor ? { points: { show: cursorPoints } } : { show: false },
      scales: { x: { time: true, ...x }, y },
      axes: [
        { ...axis, ...xAxis },
        { ...axis, size: ySize, ...(yValues ? { values: yValues } : {}) },
      ],
      series: [{}, ...series],
    },
    [[], ...series.map(() => [])],
    box,
  );
}

/** A line series. Null values break the line: nothing is drawn where no data came. */
export function line(label, colour, { fill = false, width = 2, dash = null } = {}) {
  return {
    label,
    stroke: cssVar(colour),
    width,
    spanGaps: false,
    ...(fill ? { fill: cssVar('--accent-fill') } : {}),
    ...(dash ? { dash } : {}),
    points: { show: false },
  };
}

/** A series drawn as dots only (a scatter chart). */
export function dots(label, colour) {
  return {
    label,
    stroke: cssVar(colour),
    fill: cssVar(colour),
    paths: () => null,
    points: { show: true, size: 7, fill: cssVar(colour) },
  };
}

/** Keep the chart as wide as its box. */
export function followWidth(chart, box) {
  new ResizeObserver(([entry]) => {
    const width = Math.floor(entry.contentRect.width);
    if (width > 0 && width !== chart.width) chart.setSize({ width, height: chart.height });
  }).observe(box);
}

/** fn at most once per animation frame however often this is called, and never in a hidden tab. */
export function oncePerFrame(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

/**
 * Copies of x and of each column of ys, with a break wherever two x values are
 * more than maxStep apart: an x between them whose y values are all null. A
 * line chart then shows the time when nothing came (the ticker stopped, the
 * page was offline) as a hole, not as a straight line across it.
 */
export function withGaps(x, ys, maxStep) {
  const outX = [];
  const outYs = ys.map(() => []);
  for (let i = 0; i < x.length; i += 1) {
    if (i > 0 && x[i] - x[i - 1] > maxStep) {
      outX.push((x[i - 1] + x[i]) / 2);
      for (const column of outYs) column.push(null);
    }
    outX.push(x[i]);
    ys.forEach((column, j) => outYs[j].push(column[i]));
  }
  return [outX, ...outYs];
}

/** The largest step between two points that still counts as "no gap". */
export function gapAfter(intervalSeconds) {
  const interval = Number(intervalSeconds);
  return 2.5 * (interval > 0 ? interval : 1);
}
