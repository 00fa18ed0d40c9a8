/**
 * A one-line progress bar on stderr, drawn only when stderr is a terminal (never into logs or
 * pipes), redrawn at most ten times a second.
 */
export class ProgressBar {
  private readonly stream: NodeJS.WriteStream;
  private readonly enabled: boolean;
  private lastDraw = 0;
  private drawn = false;

  constructor(stream: NodeJS.WriteStream = process.stderr, enabled = stream.isTTY === true) {
    this.stream = stream;
    this.enabled = enabled;
  }

  update(label: string, done: number, total: number): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.lastDraw < 100 && done < total) return;
    this.lastDraw = now;
    const width = 30;
    const ratio = total > 0 ? Math.min(1, done / total) : 1;
    const filled = Math.round(ratio * width);
    const bar = `${'█'.repeat(filled)}${'░'.repeat(width - filled)}`;
    const text = `${label.padEnd(10)} ${bar} ${(ratio * 100).toFixed(0).padStart(3)}%  ${formatBytes(done)} / ${formatBytes(total)}`;
    this.stream.write(`\r${text.slice(0, (this.stream.columns ?? 100) - 1)}\x1b[K`);
    this.drawn = true;
  }

  done(): void {
    if (this.enabled && this.drawn) this.stream.write('\r\x1b[K');
    this.drawn = false;
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}
