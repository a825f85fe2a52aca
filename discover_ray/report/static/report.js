// Neuron cards: search by concept and sort by score or unit, in place; no server, no libraries.
(function () {
  const grid = document.getElementById("cards");
  if (!grid) return;
  const search = document.getElementById("search");
  const sort = document.getElementById("sort");
  const shown = document.getElementById("shown");
  const cards = Array.from(grid.querySelectorAll(".card"));
  const score = (card) => { const v = parseFloat(card.dataset.score); return Number.isNaN(v) ? -Infinity : v; };

  function filter() {
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let visible = 0;
    for (const card of cards) {
      const text = card.dataset.concepts;
      const match = words.every((w) => text.includes(w));
      card.hidden = !match;
      if (match) visible += 1;
    }
    shown.textContent = `${visible} of ${cards.length} units`;
  }

  function order() {
    const how = sort.value;
    const sorted = cards.slice().sort((a, b) => {
      if (how === "score-desc") return score(b) - score(a) || a.dataset.unit - b.dataset.unit;
      if (how === "score-asc") return score(a) - score(b) || a.dataset.unit - b.dataset.unit;
      return a.dataset.unit - b.dataset.unit;
    });
    for (const card of sorted) grid.appendChild(card);
  }

  search.addEventListener("input", filter);
  sort.addEventListener("change", order);
  const query = new URLSearchParams(window.location.search).get("q");
  if (query) { search.value = query; }
  order();
  filter();
})();
