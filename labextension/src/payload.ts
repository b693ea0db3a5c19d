/**
 * The payload the kernel sends (docs/live-budget.md, protocol 1) and its validation.
 *
 * A payload comes from code the frontend does not control (another version of
 * the kernel package, a hand-made comm), so everything is checked here and the
 * rest of the extension only ever sees well-formed values.
 */

import { PROTOCOL } from './tokens';

/** Spending of one tier of a dataset's budget. */
export interface ITierSpending {
  name: string;
  spent: number;
  remaining: number;
  /** Share of the budget (0..1) the tier may use, or null when it has no cap. */
  cap: number | null;
}

/** Spending for one purpose. */
export interface IPurposeSpending {
  name: string;
  spent: number;
  remaining: number;
  /** Share of the budget (0..1) reserved for the purpose, or null. */
  reserved: number | null;
}

/** One charge to the budget, as listed under "recent". */
export interface IRelease {
  id: number | string;
  time: string;
  query: string;
  mechanism: string;
  epsilon: number;
  delta: number;
  purpose: string | null;
  tier: string | null;
  /** 95% accuracy text, or null when another kernel made the release. */
  accuracy: string | null;
}

/** The budget of one dataset. */
export interface IDatasetBudget {
  name: string;
  user: string;
  /** False when the budget comes from the ledger but the data is not protected in this kernel. */
  protected: boolean;
  mode: string;
  epsilon_total: number;
  /** What the bar shows (for zCDP: the share of the budget asked for so far). */
  epsilon_spent: number;
  epsilon_guarantee: number;
  delta_total: number;
  delta_spent: number;
  releases: number;
  tiers: ITierSpending[];
  purposes: IPurposeSpending[];
  /** The last charges, newest first. */
  recent: IRelease[];
}

/** Why the kernel sent a payload. */
export type PayloadReason = 'release' | 'state' | 'loaded' | string;

/** A whole payload. */
export interface IBudgetPayload {
  protocol: number;
  reason: PayloadReason;
  /** Milliseconds since the epoch, kernel clock. */
  sent_at: number;
  user: string;
  datasets: IDatasetBudget[];
}

type Dict = Record<string, unknown>;

function isDict(value: unknown): value is Dict {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

function numberOr(value: unknown, fallback: number): number {
  return isNumber(value) ? value : fallback;
}

function stringOr<T>(value: unknown, fallback: T): string | T {
  return typeof value === 'string' ? value : fallback;
}

function shareOrNull(value: unknown): number | null {
  return isNumber(value) ? value : null;
}

/** Items of `value` (if it is a list) that `parse` accepts. */
function listOf<T>(value: unknown, parse: (item: unknown) => T | null): T[] {
  if (!Array.isArray(value)) {
    return [];
  }
  const items: T[] = [];
  for (const item of value) {
    const parsed = parse(item);
    if (parsed !== null) {
      items.push(parsed);
    }
  }
  return items;
}

function parseTier(value: unknown): ITierSpending | null {
  if (!isDict(value) || typeof value.name !== 'string' || !isNumber(value.spent)) {
    return null;
  }
  return {
    name: value.name,
    spent: value.spent,
    remaining: numberOr(value.remaining, 0),
    cap: shareOrNull(value.cap)
  };
}

function parsePurpose(value: unknown): IPurposeSpending | null {
  if (!isDict(value) || typeof value.name !== 'string' || !isNumber(value.spent)) {
    return null;
  }
  return {
    name: value.name,
    spent: value.spent,
    remaining: numberOr(value.remaining, 0),
    reserved: shareOrNull(value.reserved)
  };
}

function parseRelease(value: unknown): IRelease | null {
  if (!isDict(value) || !isNumber(value.epsilon)) {
    return null;
  }
  const id = value.id;
  if (!isNumber(id) && !(typeof id === 'string' && id !== '')) {
    return null;
  }
  return {
    id,
    time: stringOr(value.time, ''),
    query: stringOr(value.query, ''),
    mechanism: stringOr(value.mechanism, ''),
    epsilon: value.epsilon,
    delta: numberOr(value.delta, 0),
    purpose: stringOr(value.purpose, null),
    tier: stringOr(value.tier, null),
    accuracy: typeof value.accuracy === 'string' && value.accuracy !== '' ? value.accuracy : null
  };
}

/**
 * A dataset's budget, or null when a field the sidebar cannot do without
 * (name, epsilon_total, epsilon_spent) is missing or not a finite number.
 */
export function parseDataset(value: unknown): IDatasetBudget | null {
  if (
    !isDict(value) ||
    typeof value.name !== 'string' ||
    value.name === '' ||
    !isNumber(value.epsilon_total) ||
    value.epsilon_total < 0 ||
    !isNumber(value.epsilon_spent)
  ) {
    return null;
  }
  const recent = listOf(value.recent, parseRelease);
  return {
    name: value.name,
    user: stringOr(value.user, ''),
    // A payload that does not say is from a kernel that protects the data itself.
    protected: value.protected !== false,
    mode: stringOr(value.mode, 'pure'),
    epsilon_total: value.epsilon_total,
    epsilon_spent: value.epsilon_spent,
    epsilon_guarantee: numberOr(value.epsilon_guarantee, value.epsilon_spent),
    delta_total: numberOr(value.delta_total, 0),
    delta_spent: numberOr(value.delta_spent, 0),
    releases: numberOr(value.releases, recent.length),
    tiers: listOf(value.tiers, parseTier),
    purposes: listOf(value.purposes, parsePurpose),
    recent
  };
}

/**
 * The payload in `value`, or null when it cannot be used at all: not an
 * object, another protocol, no numeric sent_at or no dataset list.
 * Malformed datasets are dropped, the others kept.
 */
export function parsePayload(value: unknown): IBudgetPayload | null {
  if (!isDict(value)) {
    console.warn('jupyter-dpmagic: ignoring a budget message that is not an object', value);
    return null;
  }
  if (value.protocol !== PROTOCOL) {
    console.warn(
      `jupyter-dpmagic: ignoring a budget message of protocol ${String(value.protocol)}; ` +
        `this sidebar understands protocol ${PROTOCOL} (are the Python package and the ` +
        'JupyterLab extension from the same release?)'
    );
    return null;
  }
  if (!isNumber(value.sent_at) || !Array.isArray(value.datasets)) {
    console.warn('jupyter-dpmagic: ignoring a budget message without sent_at or datasets', value);
    return null;
  }
  const datasets = listOf(value.datasets, parseDataset);
  if (datasets.length < value.datasets.length) {
    console.warn(
      `jupyter-dpmagic: ignored ${value.datasets.length - datasets.length} malformed dataset(s) in a budget message`
    );
  }
  return {
    protocol: PROTOCOL,
    reason: stringOr(value.reason, ''),
    sent_at: value.sent_at,
    user: stringOr(value.user, ''),
    datasets
  };
}
