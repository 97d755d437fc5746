// Drag-and-drop uploads with progress for the catalog page. Without this script the form
// still uploads, one page load per submit; with it, every dropped or chosen file is sent on
// its own request with the session's CSRF token, and its progress and result are listed.
(function () {
  "use strict";
  const form = document.querySelector("form[data-drop]");
  if (!form) {
    return;
  }
  const list = document.getElementById("upload-list");
  const token = form.querySelector("input[name=csrf_token]").value;

  function send(file) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    const bar = document.createElement("progress");
    const result = document.createElement("span");
    label.textContent = file.name;
    bar.max = file.size || 1;
    bar.value = 0;
    bar.setAttribute("aria-label", "upload of " + file.name);
    item.append(label, bar, result);
    list.append(item);
    const body = new FormData();
    body.append("file", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("X-CSRF-Token", token);
    request.setRequestHeader("X-Requested-With", "console-upload");
    request.upload.addEventListener("progress", function (event) {
      bar.value = event.loaded;
    });
    request.addEventListener("load", function () {
      let answer = null;
      try {
        answer = JSON.parse(request.responseText);
      } catch (ignored) {
        answer = null;
      }
      if (request.status < 300 && answer) {
        bar.value = bar.max;
        result.textContent = answer.kind + ", " + answer.did;
        result.dataset.outcome = "stored";
      } else {
        result.textContent = "refused (" + request.status + "): " + refusal(request.responseText);
        result.className = "problem";
        result.dataset.outcome = "refused";
      }
    });
    request.addEventListener("error", function () {
      result.textContent = "the connection failed: upload it again";
      result.className = "problem";
      result.dataset.outcome = "refused";
    });
    request.send(body);
  }

  function refusal(html) {
    // The server answers a refused upload with its error page: show its message.
    const page = new DOMParser().parseFromString(html, "text/html");
    const message = page.querySelector("[role=alert]");
    return message ? message.textContent.trim() : "see the server's log";
  }

  function sendAll(files) {
    Array.from(files).forEach(send);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const input = form.querySelector("input[type=file]");
    sendAll(input.files);
    input.value = "";
  });
  ["dragenter", "dragover"].forEach(function (name) {
    form.addEventListener(name, function (event) {
      event.preventDefault();
      form.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    form.addEventListener(name, function () {
      form.classList.remove("dragging");
    });
  });
  form.addEventListener("drop", function (event) {
    event.preventDefault();
    sendAll(event.dataTransfer.files);
  });
}());
