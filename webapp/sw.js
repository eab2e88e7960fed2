// Offline support. The page and the weights are cached on install; every same-origin GET is
// answered from the network when there is one (so updates arrive) and from the cache when not.
// Nothing is ever sent anywhere: this worker only handles GETs to the page's own origin.
const CACHE = "pneumoscope-v1";
importScripts("./wasm_features.js");
// Only the worker build this browser runs (wasm_features.js): the other is never fetched.
const WORKER_BUILD = pneumoscopeWorkerBuild(null);
const FILES = [
  "./",
  "index.html",
  "boot.js",
  "style.css",
  "webapp.js",
  "webapp_bg.wasm",
  "worker_loader.js",
  "wasm_features.js",
  `${WORKER_BUILD}.js`,
  `${WORKER_BUILD}_bg.wasm`,
  "model.json",
  "model.safetensors",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(FILES))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) {
    return;
  }
  event.respondWith(
    fetch(request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          event.waitUntil(caches.open(CACHE).then((cache) => cache.put(request, copy)));
        }
        return response;
      })
      .catch(() =>
        caches
          .match(request, { ignoreSearch: true })
          .then((cached) => cached || Response.error()),
      ),
  );
});
