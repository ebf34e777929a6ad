// A virtualised list of text lines: whatever the count, the DOM holds two
// <pre> elements with only the lines in (and near) view, one text node each.
// A sizer gives the scroll area its full height, so the scrollbar stays true.

const OVERSCAN = 20;

export class VirtualList {
  /**
   * @param {HTMLElement} viewport  the scrolling element
   * @param {(index: number) => string} lineAt  the text of line `index` (0-based)
   */
  constructor(viewport, lineAt) {
    this.viewport = viewport;
    this.lineAt = lineAt;
    this.sizer = viewport.querySelector('.results-sizer');
    this.window = viewport.querySelector('.results-window');
    this.gutter = viewport.querySelector('.results-gutter');
    this.text = viewport.querySelector('.results-text');
    this.count = 0;
    this.first = -1;
    this.last = -1;
    this.rowHeight = 0;
    // Keep showing the newest lines until the user scrolls away from the end.
    this.follow = true;
    this.frame = 0;

    viewport.addEventListener('scroll', () => {
      this.follow = this.atEnd();
      this.schedule();
    }, { passive: true });
    new ResizeObserver(() => this.schedule()).observe(viewport);
  }

  measure() {
    // Line height comes from the stylesheet, so fonts and zoom stay in CSS.
    const height = parseFloat(getComputedStyle(this.text).lineHeight);
    this.rowHeight = Number.isFinite(height) && height > 0 ? height : 20;
  }

  atEnd() {
    const { scrollTop, clientHeight, scrollHeight } = this.viewport;
    return scrollTop + clientHeight >= scrollHeight - this.rowHeight;
  }

  reset() {
    this.count = 0;
    this.follow = true;
    this.viewport.scrollTop = 0;
    this.viewport.scrollLeft = 0;
    this.update(0, true);
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.update(this.count);
    });
  }

  /** Render `count` lines; call at most once per frame. */
  update(count, force = false) {
    if (!this.rowHeight) this.measure();
    const height = this.rowHeight;
    if (count !== this.count || force) {
      this.count = count;
      this.sizer.style.height = `${count * height}px`;
      this.gutter.style.minWidth = `${String(count).length + 1}ch`;
      if (this.follow) this.viewport.scrollTop = this.viewport.scrollHeight;
    }
    const inView = Math.ceil(this.viewport.clientHeight / height) + 1;
    const top = Math.floor(this.viewport.scrollTop / height);
    const first = Math.max(0, Math.min(top, count - inView) - OVERSCAN);
    const last = Math.min(count, top + inView + OVERSCAN);
    if (!force && first === this.first && last === this.last) return;
    this.first = first;
    this.last = last;

    const numbers = new Array(last - first);
    const lines = new Array(last - first);
    for (let i = first; i < last; i++) {
      numbers[i - first] = i + 1;
      lines[i - first] = this.lineAt(i);
    }
    this.gutter.textContent = numbers.join('\n');
    this.text.textContent = lines.join('\n');
    this.window.style.transform = `translateY(${first * height}px)`;
  }
}
