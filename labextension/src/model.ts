/**
 * What the sidebar knows about each open notebook's budget, and what it shows.
 *
 * Pure state, no DOM and no JupyterLab: the connector feeds it kernel events
 * and payloads, the view renders `view` whenever `changed` fires.
 */

import { ISignal, Signal } from '@lumino/signaling';

import { IBudgetPayload, IDatasetBudget, parsePayload } from './payload';
import { IBudgetStatus, budgetStatus } from './status';

/** Where a notebook's kernel stands, as far as the sidebar knows. */
export type KernelState = 'no-kernel' | 'waiting' | 'not-loaded' | 'ready';

/** What the panel shows. */
export type ViewState = 'no-notebook' | 'no-kernel' | 'waiting' | 'not-loaded' | 'empty' | 'ready';

/** The kernel caps a state request at this many names; more would be dropped there anyway. */
export const MAX_REMEMBERED = 100;

/** One dataset, ready to render. */
export interface IDatasetView extends IBudgetStatus {
  budget: IDatasetBudget;
}

/** What the panel renders. */
export interface IBudgetView {
  state: ViewState;
  /** Path of the notebook shown, or '' when there is none. */
  notebook: string;
  /** The payload shown, or null in every state but 'ready' and 'empty'. */
  payload: IBudgetPayload | null;
  datasets: IDatasetView[];
}

/** Sent when the names remembered for a notebook change, so that they can be stored. */
export interface IRememberedChange {
  notebook: string;
  names: string[];
}

interface INotebookEntry {
  kernel: KernelState;
  payload: IBudgetPayload | null;
  /** Counts the payloads applied, so that a late "not loaded" cannot hide a newer payload. */
  generation: number;
}

/** The budget state of every notebook the sidebar follows. */
export class BudgetModel {
  private _entries = new Map<string, INotebookEntry>();
  private _remembered = new Map<string, string[]>();
  private _active: string | null = null;
  private _changed = new Signal<this, void>(this);
  private _rememberedChanged = new Signal<this, IRememberedChange>(this);

  /** Fires when what the panel shows may have changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Fires when the dataset names remembered for a notebook change. */
  get rememberedChanged(): ISignal<this, IRememberedChange> {
    return this._rememberedChanged;
  }

  /** Path of the notebook the panel follows, or null. */
  get active(): string | null {
    return this._active;
  }

  /** Follow `notebook` (a path), or nothing. */
  setActive(notebook: string | null): void {
    if (notebook === this._active) {
      return;
    }
    this._active = notebook;
    this._changed.emit();
  }

  /** The kernel state of `notebook`. */
  kernelState(notebook: string): KernelState {
    return this._entry(notebook).kernel;
  }

  /** The payload shown for `notebook`, or null. */
  payload(notebook: string): IBudgetPayload | null {
    return this._entry(notebook).payload;
  }

  /**
   * `notebook` got another kernel, or its kernel restarted or went away:
   * what was shown belongs to the old one.
   */
  kernelReset(notebook: string, hasKernel: boolean): void {
    const entry = this._entry(notebook);
    entry.kernel = hasKernel ? 'waiting' : 'no-kernel';
    entry.payload = null;
    this._notifyIfShown(notebook);
  }

  /**
   * A state request for `notebook` was sent. Returns a token for
   * `stateUnavailable`. What is shown stays until the answer replaces it.
   */
  stateRequested(notebook: string): number {
    const entry = this._entry(notebook);
    if (entry.payload === null && entry.kernel !== 'waiting') {
      entry.kernel = 'waiting';
      this._notifyIfShown(notebook);
    }
    return entry.generation;
  }

  /**
   * The kernel closed the state request `token` without an answer: the
   * extension is not loaded there, unless a payload arrived meanwhile.
   */
  stateUnavailable(notebook: string, token: number): void {
    const entry = this._entry(notebook);
    if (entry.generation !== token) {
      return;
    }
    entry.kernel = 'not-loaded';
    entry.payload = null;
    this._notifyIfShown(notebook);
  }

  /**
   * Show `data` (a message from the kernel) for `notebook`. Returns whether
   * it was applied: a malformed payload, or one older than the payload
   * shown, is ignored.
   */
  applyPayload(notebook: string, data: unknown): boolean {
    const payload = parsePayload(data);
    if (payload === null) {
      return false;
    }
    const entry = this._entry(notebook);
    if (entry.payload !== null && payload.sent_at < entry.payload.sent_at) {
      return false;
    }
    entry.payload = payload;
    entry.kernel = 'ready';
    entry.generation += 1;
    this._rememberFrom(notebook, payload);
    this._notifyIfShown(notebook);
    return true;
  }

  /** The dataset names to name in a state request for `notebook`. */
  remembered(notebook: string): string[] {
    return [...(this._remembered.get(notebook) ?? [])];
  }

  /**
   * Add `names` (e.g. restored from storage) to those remembered for
   * `notebook`. Does not fire `rememberedChanged`: they come from storage.
   */
  restoreRemembered(notebook: string, names: readonly unknown[]): void {
    const valid = names.filter((name): name is string => typeof name === 'string' && name !== '');
    this._remembered.set(notebook, mergeNames(this.remembered(notebook), valid));
  }

  /** `oldPath` was renamed to `newPath`: everything known moves with it. */
  renameNotebook(oldPath: string, newPath: string): void {
    if (oldPath === newPath) {
      return;
    }
    const entry = this._entries.get(oldPath);
    if (entry) {
      this._entries.delete(oldPath);
      this._entries.set(newPath, entry);
    }
    const names = this._remembered.get(oldPath);
    if (names) {
      this._remembered.delete(oldPath);
      this._remembered.set(newPath, names);
      this._rememberedChanged.emit({ notebook: oldPath, names: [] });
      this._rememberedChanged.emit({ notebook: newPath, names: [...names] });
    }
    if (this._active === oldPath) {
      this._active = newPath;
      this._changed.emit();
    }
  }

  /** `notebook` was closed: its kernel state goes, its remembered names stay. */
  forgetNotebook(notebook: string): void {
    this._entries.delete(notebook);
    this._notifyIfShown(notebook);
  }

  /** What the panel shows now. */
  get view(): IBudgetView {
    const notebook = this._active;
    if (notebook === null) {
      return { state: 'no-notebook', notebook: '', payload: null, datasets: [] };
    }
    const entry = this._entry(notebook);
    const payload = entry.kernel === 'ready' ? entry.payload : null;
    if (payload === null) {
      const state = entry.kernel === 'ready' ? 'waiting' : entry.kernel;
      return { state, notebook, payload: null, datasets: [] };
    }
    const datasets = payload.datasets.map(budget => ({ budget, ...budgetStatus(budget) }));
    return { state: datasets.length ? 'ready' : 'empty', notebook, payload, datasets };
  }

  private _entry(notebook: string): INotebookEntry {
    let entry = this._entries.get(notebook);
    if (!entry) {
      entry = { kernel: 'no-kernel', payload: null, generation: 0 };
      this._entries.set(notebook, entry);
    }
    return entry;
  }

  private _rememberFrom(notebook: string, payload: IBudgetPayload): void {
    const before = this.remembered(notebook);
    const names = payload.datasets.map(dataset => dataset.name);
    // A state reply answers for every name the request named, so a remembered
    // name missing from it is unknown to the ledger; other payloads only add.
    const after = payload.reason === 'state' ? mergeNames([], names) : mergeNames(before, names);
    if (after.length === before.length && after.every((name, i) => name === before[i])) {
      return;
    }
    this._remembered.set(notebook, after);
    this._rememberedChanged.emit({ notebook, names: [...after] });
  }

  private _notifyIfShown(notebook: string): void {
    if (notebook === this._active) {
      this._changed.emit();
    }
  }
}

/** `first` then the names of `more` it lacks, at most MAX_REMEMBERED, the newest kept. */
function mergeNames(first: readonly string[], more: readonly string[]): string[] {
  const names = [...first];
  for (const name of more) {
    if (!names.includes(name)) {
      names.push(name);
    }
  }
  return names.slice(-MAX_REMEMBERED);
}
