// firstvalue's dashboard script: draws the charts from the Vega-Lite specs in the page, and
// reloads the page when the store has changed under it (unless a form is being filled in).
(function () {
  "use strict";

  function drawCharts() {
    if (typeof window.vegaEmbed !== "function") { return; }
    document.querySelectorAll("[data-spec]").forEach(function (element) {
      var source = document.getElementById(element.getAttribute("data-spec"));
      if (!source) { return; }
      var spec = JSON.parse(source.textContent);
      window.vegaEmbed(element, spec, { actions: false, renderer: "svg", defaultStyle: false })
        .then(function () { element.setAttribute("data-drawn", "true"); })
        .catch(function (error) {
          element.textContent = "The chart could not be drawn: " + error;
        });
    });
  }

  var editing = false;
  document.addEventListener("input", function (event) {
    if (event.target.closest("form[method=post]")) { editing = true; }
  });

  function watch() {
    var body = document.body;
    var seconds = parseFloat(body.getAttribute("data-refresh") || "0");
    var stamp = body.getAttribute("data-stamp");
    if (!seconds || !stamp) { return; }
    window.setInterval(function () {
      if (editing || document.hidden) { return; }
      fetch("/ui/stamp", { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (data && data.stamp && data.stamp !== stamp) {
            var live = document.getElementById("live");
            if (live) { live.textContent = "New data: reloading."; }
            window.location.reload();
          }
        })
        .catch(function () { /* the server is away for a moment: try again next time */ });
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    watch();
  });
})();
