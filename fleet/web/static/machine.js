// The machine page's charts, drawn with uPlot from the series the server embedded (already downsampled to
// at most ~1000 min/max/mean points each). Thresholds and ISO zone boundaries are flat lines.
"use strict";
const COLOURS = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#546e7a"];

function flat(times, value) {
  return times.map(() => value);
}

function chart(elementId, times, lines) {
  const element = document.getElementById(elementId);
  if (!times.length || !lines.length) {
    element.textContent = "no data in this span";
    return;
  }
  const options = {
    width: Math.min(element.parentElement.clientWidth || 900, 1100),
    height: 220,
    series: [{}].concat(lines.map((line) => ({label: line.label, stroke: line.colour, width: line.width || 1.5,
                                                dash: line.dash, points: {show: false}}))),
    scales: {x: {time: true}},
  };
  new uPlot(options, [times].concat(lines.map((line) => line.values)), element);
}

function bySeries(series, prefix, suffix) {
  return Object.keys(series).filter((name) => name.startsWith(prefix) && (!suffix || name.endsWith(suffix)));
}

window.addEventListener("load", () => {
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const series = data.series;
  const score = series.score || {t: [], min: [], max: [], mean: []};
  const scoreLines = [
    {label: "score mean", values: score.mean, colour: "#000"},
    {label: "score max", values: score.max, colour: "#90a4ae", width: 1},
    {label: "score min", values: score.min, colour: "#cfd8dc", width: 1},
  ];
  if (data.thresholds) {
    scoreLines.push({label: "warning", values: flat(score.t, data.thresholds.warning), colour: "#f9a825", dash: [6, 4]});
    scoreLines.push({label: "alarm", values: flat(score.t, data.thresholds.alarm), colour: "#c62828", dash: [6, 4]});
  }
  chart("chart-score", score.t, scoreLines);
  const perChannel = (names, label) => names.map((name, i) => ({label: label(name), values: series[name].mean,
                                                                colour: COLOURS[i % COLOURS.length]}));
  const errors = bySeries(series, "channel_errors/");
  chart("chart-errors", errors.length ? series[errors[0]].t : [], perChannel(errors, (n) => n.split("/")[1]));
  const features = bySeries(series, "features/");
  chart("chart-features", features.length ? series[features[0]].t : [], perChannel(features, (n) => n.split("/")[1]));
  const velocity = bySeries(series, "channel_features/", "/" + data.velocity_feature);
  const times = velocity.length ? series[velocity[0]].t : [];
  const zones = data.iso_boundaries.map((value, i) => ({label: "zone " + "ABCD"[i] + "/" + "ABCD"[i + 1],
                                                        values: flat(times, value), colour: "#9e9e9e", dash: [4, 4], width: 1}));
  chart("chart-velocity", times, perChannel(velocity, (n) => n.split("/")[1] + " max").map((line, i) => (
    {...line, values: series[velocity[i]].max})).concat(zones));
});
