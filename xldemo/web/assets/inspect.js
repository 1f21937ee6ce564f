// the memory view: hovering (or tapping) a generated token lists its alternatives and lights up the positions it
// attended to most, those held in memory apart from those in its own segment
const tip = document.createElement('div');
tip.className = 'xl-tip';
tip.hidden = true;

const spansByPosition = (view) => {
  const map = new Map();
  for (const span of view.querySelectorAll('[data-p]'))
    for (let p = +span.dataset.p; p < +span.dataset.e; p++) map.set(p, span);
  return map;
};
const row = (cells, chosen) => {
  const tr = document.createElement('tr');
  if (chosen) tr.className = 'xl-chosen';
  for (const cell of cells) {
    const td = document.createElement('td');
    td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
};
const percent = (x) => (100 * x).toFixed(x < 0.1 ? 1 : 0) + '%';

const clear = () => {
  for (const span of element.querySelectorAll('.xl-hit, .xl-focus'))
    span.classList.remove('xl-hit', 'xl-in-memory', 'xl-focus');
  tip.hidden = true;
};

const show = (token) => {
  clear();
  const view = token.closest('.xl-inspect');
  const positions = spansByPosition(view);
  const top = JSON.parse(token.dataset.top), attended = JSON.parse(token.dataset.att);
  const shares = JSON.parse(token.dataset.mem), segmentStart = +token.dataset.s;
  const heaviest = Math.max(...attended.map(([, w]) => w), 1e-9);
  token.classList.add('xl-focus');
  tip.replaceChildren();
  const title = document.createElement('h4');
  title.textContent = `“${token.dataset.label}” at position ${token.dataset.p}: ` +
    `${percent(Math.exp(+token.dataset.lp))}, rank ${token.dataset.rank}`;
  tip.appendChild(title);
  const alternatives = document.createElement('table');
  alternatives.className = 'xl-top';
  for (const [id, label, logprob] of top)
    alternatives.appendChild(row([label, percent(Math.exp(logprob))], label === token.dataset.label));
  tip.appendChild(alternatives);
  const memory = document.createElement('div');
  memory.textContent = 'attention on memory by layer: ' + shares.map(percent).join(' · ');
  tip.appendChild(memory);
  const read = document.createElement('table');
  read.className = 'xl-attended';
  for (const [p, w] of attended) {
    const span = positions.get(p), inMemory = p < segmentStart;
    if (span) {
      span.classList.add('xl-hit');
      span.classList.toggle('xl-in-memory', inMemory);
      span.style.setProperty('--w', (w / heaviest).toFixed(2));
    }
    const tr = row([`${p}`, span ? (span.textContent.trim() || '␣') : '(not shown)', percent(w),
                    inMemory ? 'memory' : 'segment']);
    if (inMemory) tr.lastChild.className = 'xl-mem-tag';
    read.appendChild(tr);
  }
  tip.appendChild(read);
  if (!tip.isConnected) element.appendChild(tip);  // a new value re-renders the view, and with it what it held
  tip.hidden = false;
  const box = token.getBoundingClientRect(), width = tip.offsetWidth, height = tip.offsetHeight;
  tip.style.left = Math.max(4, Math.min(box.left, window.innerWidth - width - 4)) + 'px';
  tip.style.top = (box.bottom + 6 + height < window.innerHeight ? box.bottom + 6 : Math.max(4, box.top - height - 6))
    + 'px';
};

element.addEventListener('mouseover', (event) => {
  const token = event.target.closest('.xl-t');
  if (token) show(token);
});
element.addEventListener('mouseout', (event) => {
  if (event.target.closest('.xl-t')) clear();
});
element.addEventListener('click', (event) => {  // a tap on a phone
  const token = event.target.closest('.xl-t');
  if (token) show(token);
});
