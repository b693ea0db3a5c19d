/**
 * Number formatting for the panel: short, and without binary floating-point
 * noise (0.1 + 0.2 is shown as 0.3).
 */

/** `value` with at most `digits` significant digits, e.g. 0.30000000000000004 -> "0.3". */
export function formatNumber(value: number, digits = 3): string {
  if (!Number.isFinite(value)) {
    return '—';
  }
  if (value === 0) {
    return '0';
  }
  return String(Number(value.toPrecision(digits)));
}

/** A share (0..1) as a whole percentage, e.g. 0.25 -> "25%". */
export function formatShare(share: number | null): string {
  if (share === null || !Number.isFinite(share)) {
    return '—';
  }
  return `${Math.round(share * 100)}%`;
}
