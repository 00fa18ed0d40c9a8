/*
 * Devices per system version over time, as stacked areas in plain SVG (no chart library): one
 * band per version, oldest version at the bottom, with a legend and a table of the newest
 * counts for screen readers and for exact numbers.
 */

interface Point {
  at: number;
  versions: { version: string; devices: number }[];
}

const COLOURS = ['#1f5fbf', '#2e9d6b', '#d08a1a', '#9a4fc2', '#c2453a', '#3aa6b9', '#7a8597'];
const W = 760;
const H = 220;
const PAD = { left: 56, right: 12, top: 10, bottom: 26 };

export function VersionsChart({ points }: { points: Point[] }) {
  if (points.length === 0) {
    return <p className="muted">No history yet: Center counts the fleet once an hour.</p>;
  }
  const names: string[] = [];
  for (const p of points) {
    for (const v of p.versions) if (!names.includes(v.version)) names.push(v.version);
  }
  const totals = points.map((p) => p.versions.reduce((a, v) => a + v.devices, 0));
  const max = Math.max(1, ...totals);
  const x = (i: number) =>
    PAD.left + (points.length === 1 ? 0 : (i * (W - PAD.left - PAD.right)) / (points.length - 1));
  const y = (n: number) => H - PAD.bottom - (n * (H - PAD.top - PAD.bottom)) / max;
  const below = points.map(() => 0);
  const bands = names.map((name) => {
    const low = [...below];
    points.forEach((p, i) => {
      below[i]! += p.versions.find((v) => v.version === name)?.devices ?? 0;
    });
    const high = [...below];
    const top = high.map((n, i) => `${x(i)},${y(n)}`);
    const bottom = low.map((n, i) => `${x(i)},${y(n)}`).reverse();
    return { name, d: `M${top.join('L')}L${bottom.join('L')}Z` };
  });
  const last = points[points.length - 1]!;
  const day = (ms: number) =>
    new Date(ms).toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label="Devices per version over time">
        {[0, 0.5, 1].map((f) => (
          <g key={f}>
            <line
              x1={PAD.left}
              x2={W - PAD.right}
              y1={y(max * f)}
              y2={y(max * f)}
              stroke="#e3e6ec"
            />
            <text x={PAD.left - 6} y={y(max * f) + 4} textAnchor="end" fontSize="11" fill="#5b6577">
              {Math.round(max * f).toLocaleString()}
            </text>
          </g>
        ))}
        {bands.map((b, i) => (
          <path key={b.name} d={b.d} fill={COLOURS[i % COLOURS.length]} opacity="0.85" />
        ))}
        <text x={PAD.left} y={H - 6} fontSize="11" fill="#5b6577">
          {day(points[0]!.at)}
        </text>
        <text x={W - PAD.right} y={H - 6} fontSize="11" fill="#5b6577" textAnchor="end">
          {day(last.at)}
        </text>
      </svg>
      <figcaption>
        <ul className="legend">
          {names.map((name, i) => (
            <li key={name}>
              <span
                className="swatch"
                style={{ background: COLOURS[i % COLOURS.length] }}
                aria-hidden="true"
              />
              {name}:{' '}
              {(last.versions.find((v) => v.version === name)?.devices ?? 0).toLocaleString()} now
            </li>
          ))}
        </ul>
      </figcaption>
    </figure>
  );
}
