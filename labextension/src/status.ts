/**
 * How much of a dataset's budget is spent, and what that means for the user.
 *
 * Mirrors `spent_share` and `level` in jupyter_dpmagic/live.py so that the
 * sidebar and the kernel's own meters agree.
 */

import { IDatasetBudget } from './payload';

/** ok: below 80% spent; warning: from 80%; exhausted: nothing left to ask for. */
export type BudgetLevel = 'ok' | 'warning' | 'exhausted';

/** The share of the budget from which the sidebar warns. */
export const WARNING_SHARE = 0.8;

/** Remaining at most this share of the total counts as nothing left. */
export const EXHAUSTED_SLACK = 1e-9;

/** A dataset's budget as the sidebar shows it. */
export interface IBudgetStatus {
  /** Share of epsilon spent, 0..1. */
  fractionSpent: number;
  /** epsilon_total - epsilon_spent, never below 0. */
  remaining: number;
  level: BudgetLevel;
  /** The level in words, so that it does not rest on colour alone. */
  text: string;
}

/** The share of the budget spent, clamped to 0..1 (a budget of 0 is all spent). */
export function fractionSpent(epsilonSpent: number, epsilonTotal: number): number {
  if (!(epsilonTotal > 0)) {
    return 1;
  }
  return Math.min(1, Math.max(0, epsilonSpent / epsilonTotal));
}

/** The level of a budget with `epsilonSpent` of `epsilonTotal` spent. */
export function budgetLevel(epsilonSpent: number, epsilonTotal: number): BudgetLevel {
  const remaining = epsilonTotal - epsilonSpent;
  if (remaining <= EXHAUSTED_SLACK * epsilonTotal) {
    return 'exhausted';
  }
  // The slack keeps eight releases of 0.1 out of 1.0 (which add up to 0.7999999999999999) at 80%.
  const share = fractionSpent(epsilonSpent, epsilonTotal);
  return share >= WARNING_SHARE - EXHAUSTED_SLACK ? 'warning' : 'ok';
}

/** The percentage shown with a level: never says 80% while ok, nor 100% while something is left. */
function shownPercent(share: number, level: BudgetLevel): number {
  const percent = Math.round(share * 100);
  if (level === 'ok') {
    return Math.min(percent, WARNING_SHARE * 100 - 1);
  }
  if (level === 'warning') {
    return Math.max(WARNING_SHARE * 100, Math.min(percent, 99));
  }
  return 100;
}

/** The status text of a level at a share spent. */
export function statusText(share: number, level: BudgetLevel): string {
  switch (level) {
    case 'exhausted':
      return 'Budget exhausted — no more releases';
    case 'warning':
      return `${shownPercent(share, level)}% spent — running low`;
    default:
      return `${shownPercent(share, level)}% spent`;
  }
}

/** Everything the sidebar shows about how much of `dataset`'s budget is left. */
export function budgetStatus(dataset: IDatasetBudget): IBudgetStatus {
  const total = dataset.epsilon_total;
  const spent = dataset.epsilon_spent;
  const share = fractionSpent(spent, total);
  const level = budgetLevel(spent, total);
  return {
    fractionSpent: share,
    remaining: Math.max(0, total - spent),
    level,
    text: statusText(share, level)
  };
}
