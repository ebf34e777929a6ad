// Toasts: short messages in one aria-live region, so screen readers announce
// them without moving focus.

const LIFETIME_MS = { success: 5000, info: 5000, warning: 8000, error: 10000 };
const MAX_VISIBLE = 5;

export class Toaster {
  constructor(region) {
    this.region = region;
  }

  show(message, { kind = 'info', title = '' } = {}) {
    const toast = document.createElement('div');
    toast.className = `toast toast-${kind}`;
    toast.dataset.kind = kind;

    const body = document.createElement('div');
    body.className = 'toast-body';
    if (title) {
      const heading = document.createElement('strong');
      heading.className = 'toast-title';
      heading.textContent = title;
      body.append(heading);
    }
    const text = document.createElement('p');
    text.className = 'toast-message';
    text.textContent = message;
    body.append(text);

    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'toast-close';
    close.setAttribute('aria-label', 'Dismiss');
    close.textContent = '×';
    close.addEventListener('click', () => this.dismiss(toast));

    toast.append(body, close);
    this.region.append(toast);
    while (this.region.childElementCount > MAX_VISIBLE) {
      this.region.firstElementChild.remove();
    }

    // Reading takes longer than a timer assumes: hovering or focusing a toast
    // keeps it until the pointer or focus leaves.
    const lifetime = LIFETIME_MS[kind] ?? LIFETIME_MS.info;
    let timer = setTimeout(() => this.dismiss(toast), lifetime);
    const hold = () => clearTimeout(timer);
    const release = () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.dismiss(toast), lifetime / 2);
    };
    toast.addEventListener('mouseenter', hold);
    toast.addEventListener('focusin', hold);
    toast.addEventListener('mouseleave', release);
    toast.addEventListener('focusout', release);
    return toast;
  }

  dismiss(toast) {
    if (!toast.isConnected || toast.classList.contains('leaving')) return;
    toast.classList.add('leaving');
    // Removed on a timer rather than on animationend, which never fires when
    // the user asked for reduced motion.
    setTimeout(() => toast.remove(), 180);
  }
}
