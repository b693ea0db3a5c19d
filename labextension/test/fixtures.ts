/** Payloads as the kernel sends them (docs/live-budget.md), with overridable parts. */

export type Json = Record<string, unknown>;

export function dataset(overrides: Json = {}): Json {
  return {
    name: 'visits',
    user: 'alice',
    protected: true,
    mode: 'pure',
    epsilon_total: 1.0,
    epsilon_spent: 0.3,
    epsilon_guarantee: 0.3,
    delta_total: 0.0,
    delta_spent: 0.0,
    releases: 3,
    tiers: [{ name: 'standard', spent: 0.2, remaining: 0.8, cap: null }],
    purposes: [{ name: 'explore', spent: 0.3, remaining: 0.7, reserved: null }],
    recent: [
      {
        id: 12,
        time: '2026-11-28T10:00:00+00:00',
        query: 'mean(age)',
        mechanism: 'discrete Laplace',
        epsilon: 0.1,
        delta: 0.0,
        purpose: 'explore',
        tier: 'standard',
        accuracy: '±1.9 (95%)'
      }
    ],
    ...overrides
  };
}

export function payload(overrides: Json = {}, datasets: Json[] = [dataset()]): Json {
  return {
    protocol: 1,
    reason: 'release',
    sent_at: 1764300000123.4,
    user: 'alice',
    datasets,
    ...overrides
  };
}

/** Runs `body` with console.warn captured; returns the warnings. */
export function captureWarnings(body: () => void): string[] {
  const warnings: string[] = [];
  const original = console.warn;
  console.warn = (...args: unknown[]) => {
    warnings.push(args.map(String).join(' '));
  };
  try {
    body();
  } finally {
    console.warn = original;
  }
  return warnings;
}
