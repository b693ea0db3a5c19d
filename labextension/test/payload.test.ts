import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseDataset, parsePayload } from '../src/payload';
import { captureWarnings, dataset, payload } from './fixtures';

describe('payload validation', () => {
  it('accepts the payload of the protocol document', () => {
    const parsed = parsePayload(payload());
    assert.ok(parsed);
    assert.equal(parsed.reason, 'release');
    assert.equal(parsed.sent_at, 1764300000123.4);
    assert.equal(parsed.datasets.length, 1);
    const [visits] = parsed.datasets;
    assert.equal(visits.name, 'visits');
    assert.equal(visits.user, 'alice');
    assert.equal(visits.protected, true);
    assert.equal(visits.epsilon_spent, 0.3);
    assert.deepEqual(visits.tiers, [{ name: 'standard', spent: 0.2, remaining: 0.8, cap: null }]);
    assert.deepEqual(visits.purposes, [{ name: 'explore', spent: 0.3, remaining: 0.7, reserved: null }]);
    assert.equal(visits.recent.length, 1);
    assert.equal(visits.recent[0].id, 12);
    assert.equal(visits.recent[0].accuracy, '±1.9 (95%)');
  });

  it('ignores another protocol, with a warning', () => {
    let parsed: unknown = 'not called';
    const warnings = captureWarnings(() => {
      parsed = parsePayload(payload({ protocol: 2 }));
    });
    assert.equal(parsed, null);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /protocol 2/);
  });

  it('ignores a payload without protocol, sent_at or datasets, or not an object', () => {
    captureWarnings(() => {
      assert.equal(parsePayload(payload({ protocol: undefined })), null);
      assert.equal(parsePayload(payload({ protocol: '1' })), null);
      assert.equal(parsePayload(payload({ sent_at: undefined })), null);
      assert.equal(parsePayload(payload({ sent_at: 'yesterday' })), null);
      assert.equal(parsePayload(payload({ datasets: undefined })), null);
      assert.equal(parsePayload(payload({ datasets: {} })), null);
      assert.equal(parsePayload(null), null);
      assert.equal(parsePayload([payload()]), null);
      assert.equal(parsePayload('{"protocol": 1}'), null);
    });
  });

  it('drops datasets missing a field the bar needs, keeps the others', () => {
    const datasets = [
      dataset({ name: 'no-total', epsilon_total: undefined }),
      dataset({ name: 'no-spent', epsilon_spent: null }),
      dataset({ name: '' }),
      dataset({ name: 'negative', epsilon_total: -1 }),
      dataset({ name: 'string-total', epsilon_total: '1.0' }),
      'visits',
      dataset({ name: 'good' })
    ];
    let parsed: ReturnType<typeof parsePayload> = null;
    const warnings = captureWarnings(() => {
      parsed = parsePayload(payload({}, datasets as never));
    });
    assert.ok(parsed);
    assert.deepEqual(
      (parsed as NonNullable<ReturnType<typeof parsePayload>>).datasets.map(d => d.name),
      ['good']
    );
    assert.match(warnings.join('\n'), /6 malformed/);
  });

  it('fills optional fields and drops malformed list items', () => {
    const parsed = parseDataset({
      name: 'bare',
      epsilon_total: 2,
      epsilon_spent: 0.5,
      tiers: [{ name: 'standard', spent: 0.5, remaining: 1.5, cap: 0.5 }, { spent: 1 }],
      purposes: 'explore',
      recent: [{ id: 1, epsilon: 0.5, accuracy: '' }, { epsilon: 0.1 }, { id: 2 }]
    });
    assert.ok(parsed);
    assert.equal(parsed.protected, true);
    assert.equal(parsed.mode, 'pure');
    assert.equal(parsed.epsilon_guarantee, 0.5);
    assert.equal(parsed.delta_total, 0);
    assert.equal(parsed.tiers.length, 1);
    assert.equal(parsed.tiers[0].cap, 0.5);
    assert.deepEqual(parsed.purposes, []);
    assert.equal(parsed.recent.length, 1);
    assert.equal(parsed.recent[0].accuracy, null);
    assert.equal(parsed.releases, 1);
  });

  it('keeps protected: false for budgets that come from the ledger only', () => {
    const parsed = parseDataset(dataset({ protected: false }));
    assert.equal(parsed?.protected, false);
  });
});
