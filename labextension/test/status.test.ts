import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseDataset } from '../src/payload';
import { budgetLevel, budgetStatus, fractionSpent, statusText } from '../src/status';
import { formatNumber, formatShare } from '../src/format';
import { dataset } from './fixtures';

function statusOf(spent: number, total: number) {
  const parsed = parseDataset(dataset({ epsilon_spent: spent, epsilon_total: total }));
  assert.ok(parsed);
  return budgetStatus(parsed);
}

describe('budget status', () => {
  it('is ok below 80% spent', () => {
    const status = statusOf(0.3, 1.0);
    assert.equal(status.level, 'ok');
    assert.equal(status.text, '30% spent');
    assert.ok(Math.abs(status.fractionSpent - 0.3) < 1e-12);
    assert.ok(Math.abs(status.remaining - 0.7) < 1e-12);
  });

  it('is ok just below 80%', () => {
    assert.equal(budgetLevel(0.799, 1.0), 'ok');
    // Rounding must not say 80% while the level is still ok.
    assert.equal(statusOf(0.799, 1.0).text, '79% spent');
  });

  it('warns at exactly 80% spent', () => {
    const status = statusOf(0.8, 1.0);
    assert.equal(status.level, 'warning');
    assert.equal(status.text, '80% spent — running low');
    assert.equal(budgetLevel(1.6, 2.0), 'warning');
  });

  it('warns after eight releases of 0.1 out of 1.0 despite float rounding', () => {
    let spent = 0;
    for (let i = 0; i < 8; i++) {
      spent += 0.1;
    }
    assert.ok(spent < 0.8);
    assert.equal(budgetLevel(spent, 1.0), 'warning');
  });

  it('never says 100% while something is left', () => {
    const status = statusOf(0.999, 1.0);
    assert.equal(status.level, 'warning');
    assert.equal(status.text, '99% spent — running low');
  });

  it('is exhausted at 100% spent', () => {
    const status = statusOf(1.0, 1.0);
    assert.equal(status.level, 'exhausted');
    assert.equal(status.text, 'Budget exhausted — no more releases');
    assert.equal(status.remaining, 0);
    assert.equal(status.fractionSpent, 1);
  });

  it('is exhausted when what is left is within 1e-9 of the total', () => {
    assert.equal(budgetLevel(1.0 - 1e-10, 1.0), 'exhausted');
    assert.equal(budgetLevel(1.0 - 1e-6, 1.0), 'warning');
  });

  it('clamps overspending and treats a zero budget as spent', () => {
    assert.equal(fractionSpent(1.5, 1.0), 1);
    assert.equal(fractionSpent(-0.1, 1.0), 0);
    assert.equal(fractionSpent(0, 0), 1);
    assert.equal(budgetLevel(0, 0), 'exhausted');
    assert.equal(statusOf(1.5, 1.0).remaining, 0);
  });

  it('says the level in words, not only in colour', () => {
    assert.match(statusText(0.5, 'ok'), /50% spent/);
    assert.match(statusText(0.9, 'warning'), /running low/);
    assert.match(statusText(1, 'exhausted'), /exhausted/);
  });
});

describe('number formatting', () => {
  it('drops floating-point noise', () => {
    assert.equal(formatNumber(0.1 + 0.2), '0.3');
    assert.equal(formatNumber(1.23456), '1.23');
    assert.equal(formatNumber(0), '0');
    assert.equal(formatNumber(1e-6), '0.000001');
    assert.equal(formatNumber(Number.NaN), '—');
  });

  it('shows shares as percentages and null as a dash', () => {
    assert.equal(formatShare(0.25), '25%');
    assert.equal(formatShare(null), '—');
  });
});
