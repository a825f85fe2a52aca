// Neuron cards: search by concept and sort by score or unit, in place; no server, no libraries.
// A search matches a unit's own ranking first: units whose label (rank 1) matches come first, then those
// matching at rank 2, 3, ..., then those whose label in another labelling matches; each card says where.
(function () {
  const grid = document.getElementById("cards");
  if (!grid) return;
  const search = document.getElementById("search");
  const sort = document.getElementById("sort");
  const shown = document.getElementById("shown");
  const cards = Array.from(grid.querySelectorAll(".card"));
  const score = (card) => { const v = parseFloat(card.dataset.score); return Number.isNaN(v) ? -Infinity : v; };
  for (const card of cards) {
    card.ranked = JSON.parse(card.dataset.ranked || "[]");
    card.others = JSON.parse(card.dataset.others || "[]");
    card.match = card.querySelector(".match");
  }

  // where the words match: [order, text] (order 0 = the label itself); null when nowhere
  function where(card, words) {
    const hit = (text) => words.every((w) => text.includes(w));
    const rank = card.ranked.findIndex(hit);
    if (rank >= 0) return [rank, rank === 0 ? "matches its label" : `matches its concept #${rank + 1}`];
    const other = card.others.find(([, concept]) => hit(concept));
    if (other) return [card.ranked.length + 1, `matches the label by ${other[0]}`];
    return null;
  }

  function compare(a, b) {
    const how = sort.value;
    if (how === "score-desc") return score(b) - score(a) || a.dataset.unit - b.dataset.unit;
    if (how === "score-asc") return score(a) - score(b) || a.dataset.unit - b.dataset.unit;
    return a.dataset.unit - b.dataset.unit;
  }

  function update() {
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let visible = 0;
    for (const card of cards) {
      const found = words.length ? where(card, words) : [0, ""];
      card.hidden = found === null;
      card.order = found ? found[0] : Infinity;
      card.match.hidden = !found || !found[1];
      card.match.textContent = found ? found[1] : "";
      if (found) visible += 1;
    }
    const sorted = cards.slice().sort((a, b) => (a.order - b.order) || compare(a, b));
    for (const card of sorted) grid.appendChild(card);
    shown.textContent = `${visible} of ${cards.length} units`;
  }

  search.addEventListener("input", update);
  sort.addEventListener("change", update);
  const query = new URLSearchParams(window.location.search).get("q");
  if (query) { search.value = query; }
  update();
})();
