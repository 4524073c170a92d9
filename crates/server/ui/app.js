'use strict';
// The page of GET /ui: plain DOM and canvas, no library, nothing fetched but this server.

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// The API key: kept for this tab only, sent on every request to this server (the seed
// tester's requests too, which know nothing of keys).
// ---------------------------------------------------------------------------------------
const keyInput = $('api-key');
keyInput.value = sessionStorage.getItem('api-key') || '';
keyInput.addEventListener('input', () => sessionStorage.setItem('api-key', keyInput.value));
const plainFetch = window.fetch.bind(window);
window.fetch = (resource, init = {}) => {
  const key = keyInput.value.trim();
  const url = new URL(typeof resource === 'string' ? resource : resource.url, location.href);
  if (key && url.origin === location.origin) {
    const headers = new Headers(init.headers || (resource instanceof Request ? resource.headers : undefined));
    headers.set('Authorization', `Bearer ${key}`);
    init = { ...init, headers };
  }
  return plainFetch(resource, init);
};

/** The sentence a failed answer carries: `detail` (seed routes) or `error` (v2). */
function reason(status, body) {
  if (body && typeof body.detail === 'string') return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.join('\n');
  if (body && typeof body.error === 'string') return body.error;
  return `HTTP ${status}`;
}

/** Fetches JSON; throws an Error whose message is the server's reason. */
async function api(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`the server did not answer: ${err.message}`);
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) throw new Error(`${response.status}: ${reason(response.status, body)}`);
  return body;
}

function postJson(path, body) {
  return api(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
}

function showError(id, err) { $(id).textContent = err ? err.message || String(err) : ''; }

// ---------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------
let models = [];

const describe = (specs) => (specs || []).map((s) => `${s.name} ${s.dtype}[${s.shape.join('×')}]`).join(', ');

async function loadModels() {
  try {
    const listing = await api('/models');
    models = listing.models;
    const body = $('models');
    body.replaceChildren();
    for (const model of models) {
      const row = document.createElement('tr');
      row.dataset.name = model.name;
      for (const cell of [model.name + (model.default ? ' (default)' : ''), model.state + (model.error ? `: ${model.error}` : ''),
        model.backend ?? '', model.device ?? '', model.version ?? '', `${describe(model.inputs)} → ${describe(model.outputs)}`]) {
        const td = document.createElement('td');
        td.textContent = cell;
        row.append(td);
      }
      body.append(row);
    }
    const select = $('model-select');
    const previous = select.value;
    select.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.state})`, m.name)));
    select.value = models.some((m) => m.name === previous) ? previous : listing.default_model;
    // A refresh keeps what the person typed; only a different model resets the form.
    if (select.value !== previous) chooseModel(); else highlight();
    showError('models-error', null);
  } catch (err) {
    showError('models-error', err);
  }
}

const chosen = () => models.find((m) => m.name === $('model-select').value);

/** Zeros of `shape` as nested lists (a dynamic dimension, -1, becomes 1). */
function zeros(shape) {
  if (shape.length === 0) return 0;
  const [first, ...rest] = shape;
  return Array.from({ length: Math.max(first, 1) }, () => zeros(rest));
}

const elements = (shape) => shape.reduce((n, d) => n * Math.max(d, 1), 1);

function highlight() {
  const model = chosen();
  for (const row of $('models').children) row.classList.toggle('chosen', !!model && row.dataset.name === model.name);
}

function chooseModel() {
  const model = chosen();
  highlight();
  const area = $('inputs');
  area.replaceChildren();
  $('try-result').textContent = '';
  showError('try-error', null);
  if (!model) return;
  $('image-area').hidden = !model.accepts_images;
  for (const input of model.inputs || []) {
    if (model.accepts_images) break;
    const id = `input-${input.name}`;
    const label = document.createElement('label');
    label.htmlFor = id;
    label.textContent = `${input.name} — ${input.dtype}, shape [${input.shape.join(', ')}]`;
    const field = document.createElement('textarea');
    field.id = id;
    field.dataset.input = input.name;
    field.value = elements(input.shape) <= 4096 ? JSON.stringify(zeros(input.shape)) : '';
    area.append(label, field);
  }
  $('try-form').hidden = !!model.accepts_images;
}

$('model-select').addEventListener('change', chooseModel);

$('try-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const model = chosen();
  showError('try-error', null);
  $('try-result').textContent = '';
  let inputs;
  try {
    const fields = [...$('inputs').querySelectorAll('textarea')].map((f) => [f.dataset.input, JSON.parse(f.value)]);
    inputs = fields.length === 1 ? fields[0][1] : Object.fromEntries(fields);
  } catch (err) {
    showError('try-error', new Error(`the input is not JSON: ${err.message}`));
    return;
  }
  try {
    const started = performance.now();
    const answer = await postJson(`/models/${encodeURIComponent(model.name)}/predict`, { inputs });
    $('try-result').textContent = `${(performance.now() - started).toFixed(1)} ms\n${JSON.stringify(answer, null, 2)}`;
  } catch (err) {
    showError('try-error', err);
  }
});

// ---------------------------------------------------------------------------------------
// Pictures: dropped, pasted or chosen; shown as the model sees them; top classes as bars.
// ---------------------------------------------------------------------------------------
const drop = $('drop');
drop.addEventListener('click', () => $('file').click());
drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('file').click(); } });
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]); });
$('file').addEventListener('change', (e) => { if (e.target.files[0]) classify(e.target.files[0]); });
document.addEventListener('paste', (e) => {
  const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith('image/'));
  if (file && chosen()?.accepts_images) classify(file);
});

/** Draws the picture resized (shorter side 256) and center-cropped to 224, as the model's
 *  preprocessing does; for the eye only, the server does its own. */
async function preview(file) {
  const bitmap = await createImageBitmap(file);
  const scale = 256 / Math.min(bitmap.width, bitmap.height);
  const width = bitmap.width * scale;
  const height = bitmap.height * scale;
  const context = $('preview').getContext('2d');
  context.clearRect(0, 0, 224, 224);
  context.drawImage(bitmap, (224 - width) / 2, (224 - height) / 2, width, height);
}

async function classify(file) {
  const model = chosen();
  showError('try-error', null);
  $('classes').replaceChildren();
  try {
    await preview(file).catch(() => {});
    const answer = await api(`/models/${encodeURIComponent(model.name)}/predict`, {
      method: 'POST', headers: { 'Content-Type': file.type || 'image/png' }, body: file,
    });
    const classes = (answer.prediction?.classes || []).slice(0, 5);
    // Bars relative to the most probable class: an untrained model's scores are all small.
    const best = Math.max(...classes.map((c) => c.score), 1e-12);
    for (const entry of classes) {
      const row = document.createElement('div');
      const name = document.createElement('span');
      name.textContent = entry.label || `class ${entry.index}`;
      const bar = document.createElement('div');
      bar.className = 'bar';
      bar.style.width = `${Math.max((entry.score / best) * 100, 1)}%`;
      const score = document.createElement('span');
      score.textContent = `${(entry.score * 100).toFixed(1)}%`;
      row.append(name, bar, score);
      $('classes').append(row);
    }
    $('try-result').textContent = JSON.stringify(answer, null, 2);
  } catch (err) {
    showError('try-error', err);
  }
}

// ---------------------------------------------------------------------------------------
// Charts
// ---------------------------------------------------------------------------------------
/** Lines of `series` (arrays of numbers) on `canvas`, scaled to the largest value. */
function lineChart(canvas, series, colors) {
  const context = canvas.getContext('2d');
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const largest = Math.max(0, ...series.flat());
  const top = largest || 1;
  series.forEach((values, i) => {
    context.strokeStyle = colors[i];
    context.lineWidth = 2;
    context.beginPath();
    values.forEach((v, x) => {
      const px = values.length < 2 ? 0 : (x / (values.length - 1)) * (width - 4) + 2;
      const py = height - 4 - (v / top) * (height - 8);
      if (x === 0) context.moveTo(px, py); else context.lineTo(px, py);
    });
    context.stroke();
  });
  context.fillStyle = '#5c6577';
  context.font = '11px system-ui';
  context.fillText(largest ? largest.toPrecision(3) : '0', 4, 12);
}

function histogram(canvas, values) {
  const context = canvas.getContext('2d');
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  if (values.length === 0) return;
  const low = Math.min(...values);
  const high = Math.max(...values);
  const bins = new Array(12).fill(0);
  for (const v of values) bins[Math.min(11, Math.floor(((v - low) / (high - low || 1)) * 12))] += 1;
  const most = Math.max(...bins);
  const barWidth = width / bins.length;
  context.fillStyle = '#2456c7';
  bins.forEach((n, i) => {
    const h = (n / most) * (height - 20);
    context.fillRect(i * barWidth + 1, height - 14 - h, barWidth - 2, h);
  });
  context.fillStyle = '#5c6577';
  context.font = '11px system-ui';
  context.fillText(`${low.toFixed(2)} ms`, 2, height - 2);
  const right = `${high.toFixed(2)} ms`;
  context.fillText(right, width - context.measureText(right).width - 2, height - 2);
}

// ---------------------------------------------------------------------------------------
// Batch vs individual: one /predict/batch of N samples against N /predict, one at a time.
// ---------------------------------------------------------------------------------------
$('compare').addEventListener('click', async () => {
  const model = chosen();
  showError('compare-error', null);
  $('compare-result').textContent = 'running…';
  try {
    const input = model.inputs[0];
    const count = Math.min(256, Math.max(1, Number($('compare-count').value) || 16));
    const samples = Array.from({ length: count }, (_, i) => (input.shape.length === 1 && input.shape[0] === 1 ? [i + 1] : zeros(input.shape)));
    const path = `/models/${encodeURIComponent(model.name)}`;
    const batchStarted = performance.now();
    await postJson(`${path}/predict/batch`, { inputs: samples });
    const batchMs = performance.now() - batchStarted;
    const latencies = [];
    for (const sample of samples) {
      const started = performance.now();
      await postJson(`${path}/predict`, { inputs: sample });
      latencies.push(performance.now() - started);
    }
    const individualMs = latencies.reduce((a, b) => a + b, 0);
    $('compare-result').textContent = `one batch of ${count}: ${batchMs.toFixed(1)} ms · ${count} single requests: ${individualMs.toFixed(1)} ms · batching is ${(individualMs / batchMs).toFixed(1)}× faster`;
    histogram($('latency-histogram'), latencies);
  } catch (err) {
    $('compare-result').textContent = '';
    showError('compare-error', err);
  }
});

// ---------------------------------------------------------------------------------------
// Live panel: /stats every second.
// ---------------------------------------------------------------------------------------
const HISTORY = 60;
const live = { rps: [], p50: [], p99: [], queue: [], batch: [] };
let previous = null;

function push(name, value) {
  live[name].push(value);
  if (live[name].length > HISTORY) live[name].shift();
}

async function poll() {
  try {
    const stats = await api('/stats');
    const now = performance.now();
    if (previous) {
      const seconds = (now - previous.at) / 1000;
      push('rps', Math.max(0, (stats.requests_processed - previous.requests) / seconds));
    }
    previous = { at: now, requests: stats.requests_processed };
    push('p50', stats.latency_percentiles_ms?.p50 ?? 0);
    push('p99', stats.latency_percentiles_ms?.p99 ?? 0);
    push('queue', stats.queue_size ?? 0);
    push('batch', stats.average_batch_size ?? 0);
    lineChart($('chart-rps'), [live.rps], ['#2456c7']);
    lineChart($('chart-latency'), [live.p50, live.p99], ['#2456c7', '#b3261e']);
    lineChart($('chart-queue'), [live.queue], ['#1e7a3c']);
    lineChart($('chart-batch'), [live.batch], ['#7a3ea8']);
    const last = (values) => (values.length ? values[values.length - 1] : 0);
    $('v-rps').textContent = last(live.rps).toFixed(1);
    $('v-latency').textContent = `${last(live.p50).toFixed(2)} / ${last(live.p99).toFixed(2)}`;
    $('v-queue').textContent = String(last(live.queue));
    $('v-batch').textContent = last(live.batch).toFixed(2);
    showError('live-error', null);
  } catch (err) {
    showError('live-error', err);
  }
}

// The seed tester, as its own page would start it, pointed at this server.
batchTester.baseUrl = location.origin;
batchTester.renderBatchTestInterface('batch-example-container');

loadModels();
poll();
setInterval(poll, 1000);
setInterval(loadModels, 10000);
