// Follows a running activity's log (server-sent events) and reloads the page when it ends, so
// the timeline and the result show. Pages read without it: the log then refreshes by itself.
document.addEventListener("DOMContentLoaded", () => {
  const log = document.querySelector("pre.log[data-follow]");
  if (!log || !window.EventSource) return;
  const events = new EventSource(log.dataset.follow);
  let first = true;
  events.onmessage = (event) => {
    // The stream starts with the whole log: it replaces what the page was rendered with.
    if (first) { log.textContent = ""; first = false; }
    log.textContent += event.data + "\n";
    log.scrollTop = log.scrollHeight;
  };
  events.addEventListener("end", () => { events.close(); window.location.reload(); });
});
