/**
 * Line charts as SVG text, with no dependency: a bench writes its curve next to its table so a reader
 * can look instead of read. Log axes for quantities that span decades (concurrency, latency).
 */
export interface PlotSeries {
	name: string;
	color: string;
	points: Array<[number, number]>;
}

export interface LineChart {
	title: string;
	xLabel: string;
	yLabel: string;
	xLog?: boolean;
	yLog?: boolean;
	series: PlotSeries[];
}

const WIDTH = 460;
const HEIGHT = 320;
const MARGIN = { left: 70, right: 20, top: 36, bottom: 50 };

function escape(text: string): string {
	return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function label(n: number): string {
	if (n >= 1000) return `${+(n / 1000).toFixed(1)}k`;
	return n >= 10 ? String(Math.round(n)) : String(+n.toPrecision(2));
}

/** Tick values: powers of ten on a log axis, five even steps from zero on a linear one. */
function ticks(min: number, max: number, log: boolean): number[] {
	if (log) {
		const out: number[] = [];
		for (let p = Math.floor(Math.log10(min)); p <= Math.ceil(Math.log10(max)); p++) out.push(10 ** p);
		return out;
	}
	const step = niceStep(max / 5);
	return Array.from({ length: Math.ceil(max / step) + 1 }, (_, i) => i * step);
}

function niceStep(raw: number): number {
	const power = 10 ** Math.floor(Math.log10(raw));
	return [1, 2, 2.5, 5, 10].map(m => m * power).find(step => step >= raw) ?? raw;
}

/** One chart as an SVG group at (x, y). */
function chartGroup(chart: LineChart, offsetX: number): string {
	const all = chart.series.flatMap(s => s.points);
	const xTicks = ticks(Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0])), !!chart.xLog);
	const yTicks = ticks(Math.max(Math.min(...all.map(p => p[1])), 1e-3), Math.max(...all.map(p => p[1])), !!chart.yLog);
	const scale = (log: boolean, lo: number, hi: number, from: number, to: number) => (v: number) => {
		const t = log ? (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : (v - lo) / (hi - lo);
		return from + t * (to - from);
	};
	const x = scale(!!chart.xLog, xTicks[0], xTicks[xTicks.length - 1], MARGIN.left, WIDTH - MARGIN.right);
	const y = scale(!!chart.yLog, yTicks[0], yTicks[yTicks.length - 1], HEIGHT - MARGIN.bottom, MARGIN.top);
	const parts = [
		`<g transform="translate(${offsetX},0)" font-family="sans-serif" font-size="11">`,
		`<text x="${WIDTH / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">${escape(chart.title)}</text>`,
		...xTicks.map(t => `<line x1="${x(t)}" x2="${x(t)}" y1="${MARGIN.top}" y2="${HEIGHT - MARGIN.bottom}" stroke="#ddd"/><text x="${x(t)}" y="${HEIGHT - MARGIN.bottom + 15}" text-anchor="middle">${label(t)}</text>`),
		...yTicks.map(t => `<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${y(t)}" y2="${y(t)}" stroke="#ddd"/><text x="${MARGIN.left - 6}" y="${y(t) + 4}" text-anchor="end">${label(t)}</text>`),
		`<text x="${(MARGIN.left + WIDTH - MARGIN.right) / 2}" y="${HEIGHT - 12}" text-anchor="middle">${escape(chart.xLabel)}</text>`,
		`<text transform="translate(16,${(MARGIN.top + HEIGHT - MARGIN.bottom) / 2}) rotate(-90)" text-anchor="middle">${escape(chart.yLabel)}</text>`,
	];
	chart.series.forEach((s, i) => {
		const path = s.points.map(([px, py]) => `${x(px).toFixed(1)},${y(py).toFixed(1)}`).join(" ");
		parts.push(`<polyline points="${path}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
		parts.push(...s.points.map(([px, py]) => `<circle cx="${x(px).toFixed(1)}" cy="${y(py).toFixed(1)}" r="3" fill="${s.color}"/>`));
		const legendY = MARGIN.top + 6 + i * 16;
		parts.push(`<rect x="${MARGIN.left + 8}" y="${legendY - 8}" width="12" height="3" fill="${s.color}"/><text x="${MARGIN.left + 24}" y="${legendY - 3}">${escape(s.name)}</text>`);
	});
	parts.push("</g>");
	return parts.join("\n");
}

/** Charts side by side in one SVG document, with a caption line under them. */
export function svgCharts(charts: LineChart[], caption: string): string {
	const width = WIDTH * charts.length;
	const height = HEIGHT + 24;
	return [
		`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
		`<rect width="100%" height="100%" fill="white"/>`,
		...charts.map((chart, i) => chartGroup(chart, i * WIDTH)),
		`<text x="10" y="${height - 8}" font-family="sans-serif" font-size="10" fill="#555">${escape(caption)}</text>`,
		"</svg>",
		"",
	].join("\n");
}
