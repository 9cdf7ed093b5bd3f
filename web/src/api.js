// Admin API client (docs/api.md). The admin credentials live in sessionStorage only:
// they last for this browser tab's session and are removed on logout or on a 401.
import { reactive } from 'vue'
import { t } from './i18n'

const STORAGE_KEY = 'zmirror.auth'

// The password of the generated config.toml. While it is in use the server answers every
// /api call but GET /api/me and PUT /api/me/password with 403 DEFAULT_PASSWORD_ERROR.
export const DEFAULT_ADMIN_PASSWORD = 'admin123'
const DEFAULT_PASSWORD_ERROR = 'change the default admin password first'

export const session = reactive({
  token: readToken(),
  username: readUser(),
  // true: the default password is in use (the app waits for a new one); null: not known yet
  defaultPassword: null,
})

function readStored() {
  try {
    return JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null')
  } catch (e) {
    return null
  }
}

function readToken() {
  const s = readStored()
  return s && typeof s.token === 'string' ? s.token : null
}

function readUser() {
  const s = readStored()
  return s && typeof s.username === 'string' ? s.username : ''
}

export function isLoggedIn() {
  return !!session.token
}

// HTTP Basic for a UTF-8 username:password.
export function basicToken(username, password) {
  const bytes = new TextEncoder().encode(`${username}:${password}`)
  let bin = ''
  bytes.forEach((b) => {
    bin += String.fromCharCode(b)
  })
  return btoa(bin)
}

function storeSession(token, username) {
  session.token = token
  session.username = username
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ token, username }))
  } catch (e) {
    /* storage disabled: keep it in memory only */
  }
}

export function clearSession() {
  session.token = null
  session.username = ''
  session.defaultPassword = null
  try {
    sessionStorage.removeItem(STORAGE_KEY)
  } catch (e) {
    /* ignore */
  }
}

export class ApiError extends Error {
  constructor(status, message, fields = {}, retryAfter = null) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.fields = fields || {}
    this.retryAfter = retryAfter
  }
}

// Called with the ApiError when an authenticated request gets a 401 (set by main.js).
let onUnauthorized = null
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn
}

function retryAfterOf(response, body) {
  const header = response.headers.get('Retry-After')
  let seconds = header != null && /^\d+$/.test(header.trim()) ? parseInt(header, 10) : null
  if (seconds == null && body && typeof body.retry_after === 'number') seconds = Math.ceil(body.retry_after)
  return seconds
}

function defaultMessage(status) {
  if (status === 403) return t('errors.forbidden')
  if (status === 404) return t('errors.notFound')
  if (status === 409) return t('errors.conflict')
  return t('errors.http', { status })
}

async function rawRequest(method, path, { query, body, token } = {}) {
  let url = path
  if (query) {
    const params = new URLSearchParams()
    Object.entries(query).forEach(([k, v]) => {
      if (v !== undefined && v !== null && v !== '') params.append(k, String(v))
    })
    const qs = params.toString()
    if (qs) url += `?${qs}`
  }
  const headers = { Accept: 'application/json', 'X-Requested-With': 'XMLHttpRequest' }
  if (token) headers.Authorization = `Basic ${token}`
  const init = {
    method,
    headers,
    // Credentials go in our own Authorization header; "omit" keeps the browser from
    // showing its native Basic-auth prompt on a 401.
    credentials: 'omit',
    cache: 'no-store',
  }
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  let response
  try {
    response = await fetch(url, init)
  } catch (e) {
    throw new ApiError(0, t('errors.network', { msg: e.message || e }))
  }
  if (response.status === 204) return null
  const text = await response.text()
  let data = null
  if (text) {
    try {
      data = JSON.parse(text)
    } catch (e) {
      data = null
    }
  }
  if (!response.ok) {
    const message = (data && typeof data.error === 'string' && data.error) || defaultMessage(response.status)
    const fields = data && data.fields && typeof data.fields === 'object' ? data.fields : {}
    throw new ApiError(response.status, message, fields, response.status === 429 ? retryAfterOf(response, data) : null)
  }
  return data
}

export async function request(method, path, options = {}) {
  try {
    return await rawRequest(method, path, { ...options, token: session.token })
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      clearSession()
      if (onUnauthorized) onUnauthorized(e)
      e.handled = true
    } else if (e instanceof ApiError && e.status === 403 && e.message === DEFAULT_PASSWORD_ERROR) {
      // the layout shows the "set a new password" dialog instead of an error
      session.defaultPassword = true
      e.handled = true
    }
    throw e
  }
}

// Checks the credentials with GET /api/me; stores them only when they work.
export async function login(username, password) {
  const token = basicToken(username, password)
  const me = await rawRequest('GET', '/api/me', { token })
  storeSession(token, (me && me.username) || username)
  session.defaultPassword = !!(me && me.default_password)
  return me
}

// PUT /api/me/password; on success the new credentials replace the stored ones at once
// (the old password no longer works on the server).
export async function changePassword(currentPassword, newPassword) {
  const me = await request('PUT', '/api/me/password', {
    body: { current_password: currentPassword, new_password: newPassword },
  })
  const username = (me && me.username) || session.username
  storeSession(basicToken(username, newPassword), username)
  session.defaultPassword = !!(me && me.default_password)
  return me
}

export function logout() {
  clearSession()
}

export const api = {
  me: () => request('GET', '/api/me'),
  version: () => request('GET', '/api/version'),
  // tz_offset: minutes east of UTC, so that the daily buckets follow the browser's days
  stats: () => request('GET', '/api/stats', { query: { tz_offset: -new Date().getTimezoneOffset() } }),
  registries: {
    list: () => request('GET', '/api/registries'),
    create: (body) => request('POST', '/api/registries', { body }),
    update: (id, body) => request('PUT', `/api/registries/${encodeURIComponent(id)}`, { body }),
    remove: (id) => request('DELETE', `/api/registries/${encodeURIComponent(id)}`),
    test: (id) => request('POST', `/api/registries/${encodeURIComponent(id)}/test`),
    // an unsaved registry (the dialog's form; with "id" when editing: its stored secrets)
    testDraft: (body) => request('POST', '/api/registries/test', { body }),
  },
  whitelists: {
    list: () => request('GET', '/api/whitelists'),
    create: (body) => request('POST', '/api/whitelists', { body }),
    update: (id, body) => request('PUT', `/api/whitelists/${encodeURIComponent(id)}`, { body }),
    remove: (id) => request('DELETE', `/api/whitelists/${encodeURIComponent(id)}`),
    match: (repository) => request('GET', '/api/whitelists/match', { query: { repository } }),
  },
  users: {
    list: () => request('GET', '/api/users'),
    create: (body) => request('POST', '/api/users', { body }),
    update: (id, body) => request('PUT', `/api/users/${encodeURIComponent(id)}`, { body }),
    remove: (id) => request('DELETE', `/api/users/${encodeURIComponent(id)}`),
  },
  nodes: () => request('GET', '/api/nodes'),
  // the audit trail (docs/api.md "Audit trail"): {actor, action, target, since, until, limit, offset}
  audit: (query) => request('GET', '/api/audit', { query }),
  // this node's pull-through cache: fill, entries, hit ratio, bytes from cache / upstream
  cache: () => request('GET', '/api/cache'),
  // the cache page (docs/api.md "Cache"): figures of every node, namespaces, images, tags;
  // purge and invalidate act on every node
  cacheView: {
    stats: () => request('GET', '/api/cache/stats'),
    namespaces: () => request('GET', '/api/cache/namespaces'),
    images: (query) => request('GET', '/api/cache/images', { query }),
    tags: (repository) => request('GET', '/api/cache/tags', { query: { repository } }),
    purge: (query) => request('DELETE', '/api/cache', { query }),
    invalidate: (body) => request('POST', '/api/cache/invalidate', { body }),
  },
  logs: {
    list: (query) => request('GET', '/api/logs', { query }),
    clear: (before) => request('DELETE', '/api/logs', { query: before ? { before } : undefined }),
  },
}
