// The view of an address that names no view.

import { notFoundNotice } from '../widgets.js';

export class NotFoundView {
  constructor() {
    this.title = 'Not found';
  }

  mount(root) {
    root.append(notFoundNotice());
  }

  unmount() {}

  flush() {}
}
