// Sign-in: a one-time token in the URL fragment (the embedded server's link), else a key.
"use strict";

function nextUrl() {
  const next = new URLSearchParams(location.search).get("next") || "/jobs";
  // same-origin paths only: "//host" and "/\\host" would leave the site
  return /^\/(?![\/\\])/.test(next) ? next : "/jobs";
}

async function signIn(body) {
  const notice = document.getElementById("signin-notice");
  clearFieldErrors(document);
  notice.textContent = "";
  try {
    await api("/v1/session", { method: "POST", json: body });
    location.replace(nextUrl());
  } catch (err) {
    showFieldError(err, { key: "key" }, notice);
  }
}

document.getElementById("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn({ key: document.getElementById("key").value });
});

const token = new URLSearchParams(location.hash.slice(1)).get("token");
if (token) {
  history.replaceState(null, "", location.pathname + location.search); // drop it from the URL
  signIn({ token });
}
