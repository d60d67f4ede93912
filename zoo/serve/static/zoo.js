/* zoo serve's pages: plain DOM, no library. Everything shown comes from the server as data and is set with
   textContent or as an attribute, never parsed as HTML, so a file name or a card cannot inject markup. */
"use strict";

const ZooServe = (() => {
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(value, digits = 3) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(digits);
    return String(value);
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  // ------------------------------------------------------------------------------------------ the index
  async function index() {
    const list = document.getElementById("models");
    try {
      const models = await getJSON("/models");
      list.replaceChildren(...models.map((m) => el("li", {},
        el("a", { href: "/ui/" + encodeURIComponent(m.name) }, m.name),
        " — " + m.task.replace(/_/g, " ") + ": " + m.question + flagText(m))));
    } catch (err) {
      list.replaceChildren(el("li", { class: "error" }, "Could not list the models: " + err.message));
    }
  }

  function flags(model) {
    return ["tiny", "untrained", "uncalibrated"].filter((f) => model[f]);
  }

  function flagText(model) {
    const f = flags(model);
    return f.length ? " (" + f.join(", ") + ")" : "";
  }

  // ------------------------------------------------------------------------------------------ a model's page
  async function page() {
    const name = decodeURIComponent(location.pathname.split("/").pop());
    let model;
    try {
      model = await getJSON("/models/" + encodeURIComponent(name));
    } catch (err) {
      document.getElementById("question").textContent = "This model cannot be shown: " + err.message;
      return;
    }
    document.title = model.name + " — zoo serve";
    document.getElementById("method").textContent = model.display_name + " · " + model.task.replace(/_/g, " ");
    document.getElementById("question").textContent = model.question.charAt(0).toUpperCase() + model.question.slice(1);
    document.getElementById("about").textContent = (model.display_name === model.name ? model.name :
      model.name + ": " + model.display_name) +
      (model.paper ? " (" + model.paper + ")" : "") + ".";
    document.getElementById("not-meant").textContent = model.not_meant;
    document.getElementById("card").textContent = model.card;
    showBanner(model);
    buildForm(model);
  }

  function showBanner(model) {
    const said = [];
    if (model.tiny) said.push("a TINY test model: its answers show how the page works and say nothing about your images");
    if (model.untrained) said.push("UNTRAINED: its scores come from initial weights");
    if (model.uncalibrated) said.push("UNCALIBRATED: its threshold (or level map) was never fitted to data, so it states no decision");
    if (!said.length) return;
    const banner = document.getElementById("banner");
    banner.replaceChildren(el("strong", {}, "Warning: this model is not one to rely on. "),
      "It is " + said.join("; ") + ".");
    banner.hidden = false;
  }

  function fileField(id, label, multiple) {
    const input = el("input", { type: "file", id: id, name: id, accept: "image/*" });
    if (multiple) input.multiple = true;
    const zone = el("div", { class: "drop", tabindex: "0", role: "button", "aria-controls": id },
      el("label", { for: id }, label), input,
      el("span", { class: "hint" }, "Choose a file, or drop one here."));
    zone.addEventListener("keydown", (event) => {
      if (event.target === zone && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); input.click(); }
    });
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer && event.dataTransfer.files.length) input.files = event.dataTransfer.files;
    });
    return zone;
  }

  function buildForm(model) {
    const form = document.getElementById("ask");
    const inputs = document.getElementById("inputs");
    const pairs = model.inputs.includes("generated");
    if (pairs) {
      inputs.append(fileField("generated", "Generated image", false), fileField("real", "Real image", false));
    } else {
      inputs.append(fileField("images", model.gallery ? "Generated image(s)" : "Image(s)", true));
    }
    form.hidden = false;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = document.getElementById("status");
      const body = new FormData();
      let count = 0;
      for (const field of model.inputs) {
        for (const file of document.getElementById(field).files) { body.append(field, file, file.name); count += 1; }
      }
      if (!count) { status.textContent = "Choose an image first."; return; }
      status.textContent = "Scoring…";
      document.getElementById("submit").disabled = true;
      try {
        const response = await fetch("/models/" + encodeURIComponent(model.name) + "/predict",
          { method: "POST", body: body, credentials: "same-origin" });
        const answer = await response.json();
        if (!response.ok) throw new Error(answer.error || response.statusText);
        // a model that calibrates on its first input (an attribution test) holds its evidence from then on
        model.evidence = (await getJSON("/models/" + encodeURIComponent(model.name))).evidence;
        showAnswers(model, answer.rows, answer.candidates);
        status.textContent = "Scored " + answer.rows.length + (answer.rows.length === 1 ? " input." : " inputs.");
      } catch (err) {
        status.textContent = "Refused: " + err.message;
      } finally {
        document.getElementById("submit").disabled = false;
      }
    });
  }

  // ------------------------------------------------------------------------------------------ answers
  function showAnswers(model, rows, candidates) {
    const answers = document.getElementById("answers");
    answers.replaceChildren(...rows.map((row, i) => answer(model, row, candidates ? candidates[i] : null)));
  }

  function inputName(row) {
    if ("path" in row) return row.path;
    if ("generated" in row) return row.generated + " against " + row.real;
    return row.id;  // a gallery search: zoo match's id, the file name without its suffix
  }

  function verdictText(model, row) {
    if (row.error) return "Not scored: " + row.error;
    if ("level" in row && row.level !== null) {
      const exact = row.exact_copy === 1 ? " (an exact copy: the same pixels)" : "";
      const uncal = row.uncalibrated ? " — from an unfitted level map, not a finding" : "";
      const of = "match_id" in row ? " against the gallery's " + row.match_id : "";
      return "Replication level " + fmt(row.level) + " of 5" + of + exact + uncal;
    }
    if (row.verdict) return "Verdict: " + row.verdict;
    if (row.uncalibrated) return "No verdict: the model is uncalibrated (score " + fmt(row.score) + ")";
    return "Score " + fmt(row.score);
  }

  function answer(model, row, candidates) {
    const box = el("article", { class: "answer" });
    box.append(el("h2", {}, inputName(row)));
    box.append(el("p", { class: "verdict" + (row.error ? " error" : ""), "data-verdict": row.verdict || "" },
      verdictText(model, row)));
    if (!row.error) {
      const evidence = el("div", { class: "evidence" });
      if ("pdf_0" in row) evidence.append(pdfBars(row, "pdf_"));
      else if (row.p0 !== null && row.p0 !== undefined) evidence.append(pdfBars(row, "p"));
      if (candidates) evidence.append(galleryMatches(candidates));
      const ev = model.evidence;
      if (ev && ev.distributions && row[ev.column] !== null && row[ev.column] !== undefined) {
        evidence.append(distributions(ev, row));
      } else if ("score" in row && "threshold" in row && row.threshold !== null) evidence.append(scoreLine(row));
      else if ("score" in row && model.calibrates_threshold) {
        evidence.append(el("p", { class: "note" }, "This model keeps no validation score distributions (it does not " +
          "calibrate a threshold, or its checkpoint predates them), so the score is shown alone."));
      }
      if ("p_value" in row) evidence.append(pValue(row));
      if (row.artifact) {
        evidence.append(el("figure", {},
          el("img", { src: row.artifact, alt: "The original, masked and recovered pictures of " + inputName(row),
            class: "artifact", id: "artifact" }),
          el("figcaption", {}, "Left to right: the original, the masked and the recovered picture.")));
      }
      box.append(evidence);
    }
    box.append(rowTable(row));
    return box;
  }

  function rowTable(row) {
    const body = el("tbody", {});
    for (const [key, value] of Object.entries(row)) {
      body.append(el("tr", {}, el("th", { scope: "row" }, key), el("td", {}, fmt(value, 4))));
    }
    return el("details", { class: "row" }, el("summary", {}, "Every column of this row (as zoo predict writes it)"),
      el("table", {}, body));
  }

  // the six-level PDF as bars, the chosen level marked (zoo predict names its columns pdf_k, zoo match pk)
  function pdfBars(row, prefix) {
    const levels = [0, 1, 2, 3, 4, 5].filter((k) => (prefix + k) in row);
    const width = 600, height = 200, left = 40, bottom = 30, top = 16;
    const barW = (width - left - 10) / levels.length;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "evidence-pdf",
      "aria-label": "Probability of each replication level" });
    chart.append(svg("title", {}, "Probability of each replication level"));
    chart.append(svg("line", { x1: left, y1: height - bottom, x2: width - 10, y2: height - bottom, class: "axis" }));
    levels.forEach((k, i) => {
      const p = row[prefix + k] || 0;
      const h = p * (height - bottom - top);
      const chosen = k === ("level_argmax" in row ? row.level_argmax : Math.round(row.level));
      chart.append(svg("rect", { x: left + i * barW + 6, y: height - bottom - h, width: barW - 12, height: h,
        class: chosen ? "bar chosen" : "bar", "data-level": k, "data-p": p }));
      chart.append(svg("text", { x: left + i * barW + barW / 2, y: height - 10, "text-anchor": "middle" }, "level " + k));
      chart.append(svg("text", { x: left + i * barW + barW / 2, y: height - bottom - h - 4, "text-anchor": "middle",
        class: "small" }, (100 * p).toFixed(0) + "%"));
    });
    const facts = [];
    if ("similarity" in row) facts.push("similarity " + fmt(row.similarity));
    if ("level_expected" in row) facts.push("expected level " + fmt(row.level_expected));
    return el("figure", {}, chart, el("figcaption", {}, "The model's probability of each level (the darker bar: " +
      "the most probable)" +
      (facts.length ? "; " + facts.join(", ") : "") + "."));
  }

  // a generated image's top-k gallery matches, the row's match first: each gallery image with its level
  function galleryMatches(candidates) {
    const list = el("ol", { class: "matches", id: "gallery-matches" });
    for (const c of candidates) {
      const facts = "level " + fmt(c.level) + " · cosine " + fmt(c.similarity) +
        (c.exact_copy ? " · an exact copy (the same pixels)" : "") +
        (!c.exact_copy && c.descriptor_identical ? " · identical descriptors (says nothing of the pixels)" : "");
      const picture = c.thumbnail ? el("img", { src: c.thumbnail, alt: "Gallery image " + c.id, class: "thumb" }) :
        el("span", { class: "note" }, "(no longer readable where the gallery was embedded)");
      list.append(el("li", { class: "match", "data-level": c.level }, picture,
        el("span", { class: "match-id" }, c.id), el("span", { class: "note" }, facts)));
    }
    return el("figure", {}, list, el("figcaption", {}, "The gallery's " + candidates.length + " nearest images " +
      "by cosine, the row's match first, then by the model's predicted replication level of each pair."));
  }

  // a centred label's x, kept inside the drawing so that a value at either end is not cut off (about 9 px a
  // character at the drawings' 16 px font)
  function inside(x, width, text) {
    const half = Math.min(width / 2, 4.5 * text.length + 4);
    return Math.min(Math.max(x, half), width - half);
  }

  function thresholdLabel(row) {
    return (row.uncalibrated ? "default threshold (not calibrated) " : "threshold ") + fmt(row.threshold);
  }

  function axisScale(values, lo, hi) {
    let min = Math.min(...values), max = Math.max(...values);
    if (!(max > min)) { min -= 0.5; max += 0.5; }
    const pad = (max - min) * 0.05;
    min -= pad; max += pad;
    return (v) => lo + (v - min) / (max - min) * (hi - lo);
  }

  // the row's value against the distributions the model was calibrated on (GET /models' "evidence": the
  // validation scores of both classes, an attribution test's calibration losses, ...): a box holds the middle
  // half, its whiskers reach the lowest and the highest, the line in it is the median; the dashed line is the cut
  function distributions(ev, row) {
    const names = Object.keys(ev.distributions);
    const value = row[ev.column];
    const width = 600, left = 160, right = 20, rowH = 46, top = 26;
    const height = top + rowH * names.length + 40;
    const cut = ev.threshold ? ev.threshold : (row.threshold !== null && row.threshold !== undefined ?
      { value: row.threshold, label: thresholdLabel(row) } : null);
    const log = ev.scale === "log";
    const pos = (v) => (log ? Math.log10(Math.max(v, 1e-30)) : v);
    const all = names.flatMap((n) => ev.distributions[n].quantiles).filter((v) => v !== null).concat([value]);
    if (cut) all.push(cut.value);
    const scale = axisScale(all.map(pos), left, width - right);
    const x = (v) => scale(pos(v));
    const q = (quantiles, level) => quantiles[Math.round(level * (quantiles.length - 1))];
    const title = "This image's " + ev.label + " against the " + names.join(" and ");
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "evidence-distribution",
      "data-column": ev.column, "aria-label": title });
    chart.append(svg("title", {}, title));
    names.forEach((name, i) => {
      const d = ev.distributions[name];
      const qs = d.quantiles;
      const y = top + i * rowH + rowH / 2;
      // the name over its count, each kept inside the left margin (about 8 px a character at 14 px)
      const short = name.length > 19 ? name.slice(0, 18) + "…" : name;
      chart.append(svg("text", { x: left - 8, y: y - 2, "text-anchor": "end", class: "small" }, short));
      chart.append(svg("text", { x: left - 8, y: y + 14, "text-anchor": "end", class: "small" }, "(" + d.count + ")"));
      chart.append(svg("line", { x1: x(q(qs, 0)), x2: x(q(qs, 1)), y1: y, y2: y, class: "whisker" }));
      chart.append(svg("rect", { x: x(q(qs, 0.25)), y: y - 12, width: Math.max(1, x(q(qs, 0.75)) - x(q(qs, 0.25))),
        height: 24, class: "box class-" + (names.length === 1 ? 1 : i), "data-label": name }));
      chart.append(svg("line", { x1: x(q(qs, 0.5)), x2: x(q(qs, 0.5)), y1: y - 12, y2: y + 12, class: "median" }));
    });
    const base = top + rowH * names.length;
    if (cut) {
      const text = ev.threshold ? cut.label + ": " + fmt(cut.value) : cut.label;
      chart.append(svg("line", { x1: x(cut.value), x2: x(cut.value), y1: top - 10, y2: base, class: "threshold",
        id: "threshold-line", "data-value": cut.value }));
      chart.append(svg("text", { x: inside(x(cut.value), width, text), y: top - 14, "text-anchor": "middle",
        class: "small" }, text));
    }
    chart.append(svg("path", { d: `M ${x(value)} ${base + 4} l -7 12 l 14 0 z`, class: "marker",
      id: "score-marker", "data-value": value }));
    chart.append(svg("text", { x: inside(x(value), width, "this image: " + fmt(value)), y: base + 30,
      "text-anchor": "middle" }, "this image: " + fmt(value)));
    return el("figure", {}, chart, el("figcaption", {}, "This image's " + ev.label + " (triangle" +
      (log ? ", on a log scale" : "") + ") against " + ev.about + " (" + names.map((n) => n + ": " +
      ev.distributions[n].count).join(", ") + "): each box holds the middle half of its values, its " +
      "whiskers reach the lowest and the highest, the line in it is the median" +
      (cut ? "; the dashed line is the " + (ev.threshold ? cut.label : "decision threshold") : "") + "."));
  }

  // a score and its threshold on one line (no stored distributions)
  function scoreLine(row) {
    const width = 600, height = 90, left = 20, right = 20, y = 40;
    const x = axisScale([row.score, row.threshold], left, width - right);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "evidence-threshold",
      "aria-label": "The score against the threshold" });
    chart.append(svg("title", {}, "The score against the threshold"));
    chart.append(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "axis" }));
    chart.append(svg("line", { x1: x(row.threshold), x2: x(row.threshold), y1: y - 22, y2: y + 10, class: "threshold",
      id: "threshold-line", "data-value": row.threshold }));
    chart.append(svg("text", { x: inside(x(row.threshold), width, thresholdLabel(row)), y: y - 26, "text-anchor": "middle",
      class: "small" }, thresholdLabel(row)));
    chart.append(svg("path", { d: `M ${x(row.score)} ${y + 4} l -7 12 l 14 0 z`, class: "marker", id: "score-marker",
      "data-value": row.score }));
    chart.append(svg("text", { x: inside(x(row.score), width, "this image: " + fmt(row.score)), y: y + 32,
      "text-anchor": "middle" }, "this image: " + fmt(row.score)));
    return el("figure", {}, chart, el("figcaption", {}, "The score (triangle) against the decision threshold."));
  }

  // the p-value on [0, 1], with the loss it was computed from
  function pValue(row) {
    const width = 600, height = 90, left = 20, right = 20, y = 40;
    const x = (v) => left + v * (width - left - right);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "evidence-pvalue",
      "aria-label": "The p-value of the belonging test" });
    chart.append(svg("title", {}, "The p-value of the belonging test"));
    chart.append(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "axis" }));
    for (const tick of [0, 0.05, 0.5, 1]) {
      chart.append(svg("line", { x1: x(tick), x2: x(tick), y1: y - 4, y2: y + 4, class: "axis" }));
      chart.append(svg("text", { x: x(tick), y: y - 10, "text-anchor": "middle", class: "small" }, String(tick)));
    }
    chart.append(svg("path", { d: `M ${x(row.p_value)} ${y + 4} l -7 12 l 14 0 z`, class: "marker",
      id: "pvalue-marker", "data-value": row.p_value }));
    chart.append(svg("text", { x: inside(x(row.p_value), width, "p = " + fmt(row.p_value)), y: y + 32,
      "text-anchor": "middle" }, "p = " + fmt(row.p_value)));
    const decided = row.decision === null || row.decision === undefined ? "no decision is stated" :
      "the test decided " + (row.verdict || row.decision);
    return el("figure", {}, chart, el("figcaption", {}, "This image's reconstruction loss is " + fmt(row.loss) +
      "; the p-value says how unusual that loss is among the model's own calibration images; " + decided + "."));
  }

  return { index, page };
})();
