/**
 * The "Privacy budget" panel: renders a BudgetModel's view with plain DOM.
 *
 * The ids, classes and data-* attributes set here are read by the browser
 * tests; keep them as they are (see tokens.ts for the panel id).
 */

import { Widget } from '@lumino/widgets';

import { formatNumber, formatShare } from './format';
import { BudgetModel, IBudgetView, IDatasetView, ViewState } from './model';
import { IBudgetPayload, IPurposeSpending, IRelease, ITierSpending } from './payload';
import { PANEL_ID, PANEL_TITLE } from './tokens';

/** What the panel says when there is nothing to show. */
export const EMPTY_TEXTS: Record<Exclude<ViewState, 'ready'>, string> = {
  'no-notebook': 'Open a notebook to see its privacy budget.',
  'no-kernel': 'This notebook has no kernel. Start one to see its privacy budget.',
  waiting: 'Waiting for the kernel…',
  'not-loaded': 'Run %load_ext jupyter_dpmagic in this notebook to see its privacy budget.',
  empty: 'No protected data yet: dp.protect(df, name=..., epsilon=...)'
};

const LEDGER_ONLY_TEXT = 'from the ledger; protect the data again to query it';

/** Creates `tag` with `className` and, if given, text. */
function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** A small table with a header row; `rows` are cell texts. */
function table(caption: string, headers: string[], rows: string[][]): HTMLTableElement {
  const node = element('table', 'jp-dpmagic-Table');
  node.appendChild(element('caption', '', caption));
  const head = node.createTHead().insertRow();
  for (const header of headers) {
    const cell = element('th', '', header);
    cell.scope = 'col';
    head.appendChild(cell);
  }
  const body = node.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const text of row) {
      tr.insertCell().textContent = text;
    }
  }
  return node;
}

function tierRow(tier: ITierSpending): string[] {
  return [tier.name, formatNumber(tier.spent), formatNumber(tier.remaining), formatShare(tier.cap)];
}

function purposeRow(purpose: IPurposeSpending): string[] {
  return [purpose.name, formatNumber(purpose.spent), formatNumber(purpose.remaining), formatShare(purpose.reserved)];
}

/** The bar of epsilon spent; its state is also in aria-* and in words. */
function progressBar(dataset: IDatasetView): HTMLElement {
  const { budget } = dataset;
  const percent = Math.round(dataset.fractionSpent * 100);
  const bar = element('div', 'jp-dpmagic-Bar');
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-label', `Privacy budget (ε) spent on ${budget.name}`);
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.setAttribute('aria-valuenow', String(percent));
  bar.setAttribute('aria-valuetext', dataset.text);
  const fill = element('div', 'jp-dpmagic-Bar-fill');
  fill.style.width = `${dataset.fractionSpent * 100}%`;
  bar.appendChild(fill);
  return bar;
}

/**
 * The last releases, newest first (the payload's order): a list rather than a
 * table, so that long queries and accuracy texts wrap in a narrow sidebar.
 */
function releasesList(releases: IRelease[]): HTMLElement {
  const node = element('section', 'jp-dpmagic-Releases');
  node.appendChild(element('h4', 'jp-dpmagic-Releases-title', 'Last releases'));
  const list = element('ol', 'jp-dpmagic-Releases-list');
  for (const release of releases) {
    const item = element('li', 'jp-dpmagic-Release');
    item.dataset.chargeId = String(release.id);
    if (release.time) {
      item.title = release.time;
    }
    item.appendChild(element('div', 'jp-dpmagic-Release-query', release.query || '—'));
    const details = [`ε ${formatNumber(release.epsilon)}`, release.mechanism || '—'];
    // The kernel's accuracy text says its level; charges made before a restart have none.
    details.push(release.accuracy ?? 'accuracy not kept');
    item.appendChild(element('div', 'jp-dpmagic-Release-details', details.join(' · ')));
    list.appendChild(item);
  }
  node.appendChild(list);
  return node;
}

/** The card of one dataset. */
export function datasetCard(dataset: IDatasetView): HTMLElement {
  const { budget } = dataset;
  const card = element('section', `jp-dpmagic-Dataset jp-dpmagic-mod-${dataset.level}`);
  card.dataset.dataset = budget.name;
  card.dataset.status = dataset.level;
  card.dataset.protected = String(budget.protected);
  card.dataset.epsilonSpent = String(budget.epsilon_spent);
  card.dataset.epsilonTotal = String(budget.epsilon_total);
  card.dataset.epsilonRemaining = String(budget.epsilon_total - budget.epsilon_spent);
  card.dataset.releases = String(budget.releases);

  const header = element('header', 'jp-dpmagic-Dataset-header');
  header.appendChild(element('h3', 'jp-dpmagic-Dataset-name', budget.name));
  if (budget.user) {
    header.appendChild(element('span', 'jp-dpmagic-Dataset-user', budget.user));
  }
  if (budget.mode && budget.mode !== 'pure') {
    header.appendChild(element('span', 'jp-dpmagic-Dataset-mode', budget.mode));
  }
  card.appendChild(header);

  if (!budget.protected) {
    card.appendChild(element('p', 'jp-dpmagic-Dataset-ledgerOnly', LEDGER_ONLY_TEXT));
  }

  card.appendChild(progressBar(dataset));
  card.appendChild(element('p', 'jp-dpmagic-Status', dataset.text));
  card.appendChild(
    element(
      'p',
      'jp-dpmagic-Epsilon',
      `ε ${formatNumber(budget.epsilon_spent)} spent of ${formatNumber(budget.epsilon_total)}, ` +
        `${formatNumber(dataset.remaining)} left · ${budget.releases} release${budget.releases === 1 ? '' : 's'}`
    )
  );
  if (budget.mode === 'zcdp' && budget.epsilon_guarantee !== budget.epsilon_spent) {
    card.appendChild(
      element('p', 'jp-dpmagic-Guarantee', `Guarantee so far: ε ${formatNumber(budget.epsilon_guarantee)}`)
    );
  }
  if (budget.delta_total > 0) {
    card.appendChild(
      element(
        'p',
        'jp-dpmagic-Delta',
        `δ ${formatNumber(budget.delta_spent)} spent of ${formatNumber(budget.delta_total)}`
      )
    );
  }
  if (budget.tiers.length) {
    card.appendChild(table('Spent per tier', ['Tier', 'Spent', 'Left', 'Cap'], budget.tiers.map(tierRow)));
  }
  if (budget.purposes.length) {
    card.appendChild(
      table('Spent per purpose', ['Purpose', 'Spent', 'Left', 'Reserved'], budget.purposes.map(purposeRow))
    );
  }
  if (budget.recent.length) {
    card.appendChild(releasesList(budget.recent));
  }
  return card;
}

/** The sidebar panel. */
export class BudgetPanel extends Widget {
  private _model: BudgetModel;
  private _body: HTMLElement;
  private _shownPayload: IBudgetPayload | null = null;

  constructor(model: BudgetModel) {
    super();
    this._model = model;
    this.id = PANEL_ID;
    this.addClass('jp-dpmagic-Panel');
    this.title.caption = PANEL_TITLE;
    this.node.setAttribute('aria-label', PANEL_TITLE);
    this.node.dataset.renderedAt = '';
    this.node.appendChild(element('h2', 'jp-dpmagic-Panel-title', PANEL_TITLE));
    this._body = element('div', 'jp-dpmagic-Panel-body');
    // Screen readers hear budget changes without moving focus.
    this._body.setAttribute('aria-live', 'polite');
    this.node.appendChild(this._body);
    model.changed.connect(this._render, this);
    this._render();
  }

  get model(): BudgetModel {
    return this._model;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._model.changed.disconnect(this._render, this);
    super.dispose();
  }

  /**
   * Renders at once rather than on the next animation frame: the attributes
   * must be current even while the sidebar is collapsed, and a rebuild of a
   * few cards is cheap.
   */
  private _render(): void {
    const view = this._model.view;
    this._setAttributes(view);
    this._body.replaceChildren(...this._content(view));
  }

  private _setAttributes(view: IBudgetView): void {
    const data = this.node.dataset;
    data.state = view.state;
    data.notebook = view.notebook;
    data.sentAt = view.payload ? String(view.payload.sent_at) : '';
    if (view.payload !== null && view.payload !== this._shownPayload) {
      data.renderedAt = String(Date.now());
    }
    this._shownPayload = view.payload;
  }

  private _content(view: IBudgetView): HTMLElement[] {
    if (view.state === 'ready') {
      return view.datasets.map(datasetCard);
    }
    const message = element('p', 'jp-dpmagic-Empty', EMPTY_TEXTS[view.state]);
    message.dataset.state = view.state;
    return [message];
  }
}
