// aevents dashboard: refresh the live pages in place, and "select all" on the dead letters.
// No framework and no network access beyond this dashboard's own pages.
(function () {
  "use strict";
  var main = document.getElementById("content");
  var seconds = main ? parseFloat(main.getAttribute("data-refresh")) : NaN;
  if (seconds > 0) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(window.location.href, {
        headers: { "X-Dashboard-Partial": "1" },
        credentials: "same-origin",
        cache: "no-store",
      })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          main.innerHTML = html;
          main.removeAttribute("data-stale");
        })
        .catch(function () {
          main.setAttribute("data-stale", "true");
        })
        .finally(function () {
          busy = false;
        });
    }, seconds * 1000);
  }
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches("input[data-select-all]")) return;
    var form = box.closest("form");
    form.querySelectorAll('input[type="checkbox"][name="ids"]').forEach(function (each) {
      each.checked = box.checked;
    });
  });
})();
