// Line charts as inline SVG, drawn from arrays of (time, value); no library, no network.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes || {})) {
    element.setAttribute(key, String(value));
  }
  return element;
}

function formatTick(value) {
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  const magnitude = Math.abs(value);
  if (magnitude >= 1000) return value.toLocaleString(undefined, {maximumFractionDigits: 0});
  if (magnitude >= 10) return value.toFixed(1);
  if (magnitude >= 0.01) return value.toFixed(3);
  return value.toExponential(1);
}

function formatClock(unixSeconds, spanSeconds) {
  const date = new Date(unixSeconds * 1000);
  if (spanSeconds > 2 * 86400) return date.toLocaleDateString(undefined, {month: "short", day: "numeric"});
  return date.toLocaleTimeString(undefined, {hour: "2-digit", minute: "2-digit"});
}

// Draws (or redraws) one chart into `container`: the points whose value is a finite number.
// The SVG carries data-points (how many were drawn) so a test, or a curious reader, can check it.
function drawLineChart(container, times, values) {
  const width = 320, height = 140, left = 44, right = 8, top = 10, bottom = 22;
  const points = [];
  for (let i = 0; i < times.length; i++) {
    if (typeof values[i] === "number" && Number.isFinite(values[i])) points.push([times[i], values[i]]);
  }
  const svg = svgElement("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", "data-points": points.length});
  svg.appendChild(svgElement("rect", {x: left, y: top, width: width - left - right, height: height - top - bottom,
                                      class: "plot"}));
  if (points.length === 0) {
    const empty = svgElement("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty"});
    empty.textContent = "no data yet";
    svg.appendChild(empty);
    container.replaceChildren(svg);
    return;
  }
  let tMin = points[0][0], tMax = points[points.length - 1][0];
  let vMin = Math.min(...points.map(p => p[1])), vMax = Math.max(...points.map(p => p[1]));
  if (tMax === tMin) { tMin -= 1; tMax += 1; }
  if (vMax === vMin) { const pad = Math.abs(vMax) * 0.1 || 1; vMin -= pad; vMax += pad; }
  const x = t => left + (t - tMin) / (tMax - tMin) * (width - left - right);
  const y = v => top + (1 - (v - vMin) / (vMax - vMin)) * (height - top - bottom);
  for (const v of [vMin, (vMin + vMax) / 2, vMax]) {
    svg.appendChild(svgElement("line", {x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid"}));
    const label = svgElement("text", {x: left - 4, y: y(v) + 3, "text-anchor": "end", class: "tick"});
    label.textContent = formatTick(v);
    svg.appendChild(label);
  }
  for (const [t, anchor] of [[tMin, "start"], [tMax, "end"]]) {
    const label = svgElement("text", {x: x(t), y: height - 6, "text-anchor": anchor, class: "tick"});
    label.textContent = formatClock(t, tMax - tMin);
    svg.appendChild(label);
  }
  const path = points.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.appendChild(svgElement("path", {d: path, class: "line"}));
  const [lastT, lastV] = points[points.length - 1];
  svg.appendChild(svgElement("circle", {cx: x(lastT), cy: y(lastV), r: 3, class: "last"}));
  container.replaceChildren(svg);
}

window.SwarmCharts = {drawLineChart};
