// Verify page: run VerifyLedger through the console's server-sent events and show its
// progress live. Without script the form's GET shows the result when the check is done.
"use strict";
(function () {
  const form = document.getElementById("verify-form");
  if (!form || !window.EventSource) return;
  const box = document.getElementById("verify-progress");
  const counts = document.getElementById("verify-counts");
  const output = document.getElementById("verify-output");
  const button = document.getElementById("verify-button");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const query = new URLSearchParams(new FormData(form)).toString();
    output.textContent = "";
    box.hidden = false;
    button.disabled = true;
    counts.textContent = "Starting…";
    const source = new EventSource("/verify/events?" + query);
    const finish = function () { source.close(); button.disabled = false; box.hidden = true; };
    source.addEventListener("progress", function (message) {
      const data = JSON.parse(message.data);
      counts.dataset.positionsChecked = data.positions_checked;
      counts.dataset.entriesChecked = data.entries_checked;
      counts.textContent = data.positions_checked + " positions, " + data.entries_checked +
        " entries checked, " + data.broken_links.length + " broken so far";
    });
    source.addEventListener("result", function (message) {
      const data = JSON.parse(message.data);
      output.innerHTML = data.html;  // rendered and escaped by the console's template
      finish();
    });
    source.addEventListener("failure", function (message) {
      const data = JSON.parse(message.data);
      const problem = document.createElement("p");
      problem.className = "problem";
      problem.id = "verify-failure";
      problem.textContent = data.message;
      output.replaceChildren(problem);
      finish();
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) return;
      const problem = document.createElement("p");
      problem.className = "problem";
      problem.id = "verify-failure";
      problem.textContent = "The connection to the console was lost.";
      output.replaceChildren(problem);
      finish();
    };
  });
})();
