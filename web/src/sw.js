// The app shell's service worker (docs/webapp.md): the page, its script and its style
// are cached at install, so /app/ loads offline. build.mjs fills in the version and files.
const VERSION = '{{VERSION}}'
const CACHE = 'magni-shell-' + VERSION
const SHELL = ['./', ...{{ASSETS}}]

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()))
})

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith('magni-shell-') && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()))
})

self.addEventListener('fetch', (event) => {
  const { request } = event
  const url = new URL(request.url)
  const scope = new URL(self.registration.scope)
  if (request.method !== 'GET' || url.origin !== scope.origin || !url.pathname.startsWith(scope.pathname)) return
  if (request.mode === 'navigate') {
    // The page: the network's when it answers (a new version), else the cached one.
    event.respondWith(fetch(request).then((resp) => {
      if (resp.ok) { const copy = resp.clone(); caches.open(CACHE).then((cache) => cache.put('./', copy)) }
      return resp
    }).catch(() => caches.match('./', { cacheName: CACHE })))
    return
  }
  // Content-hashed files never change: the cache's copy, else the network's.
  event.respondWith(caches.match(request, { cacheName: CACHE }).then((hit) => hit ?? fetch(request)))
})
