// Helpers of the sync page and its components (web/src/views/Sync.vue, Sync*.vue): the API
// client of /api/sync (docs/api.md) and how a job's and a run's figures are written.
import { request } from '../api'
import { t } from '../i18n'

// the states of a run that is not over (the page polls those every second)
export const ACTIVE_STATES = ['queued', 'running', 'paused']

const enc = encodeURIComponent

export const syncApi = {
  // useCrud's resource: list() answers {items}
  list: async () => {
    const data = await request('GET', '/api/sync/jobs')
    return { items: (data && data.jobs) || [] }
  },
  create: (body) => request('POST', '/api/sync/jobs', { body }),
  update: (id, body) => request('PUT', `/api/sync/jobs/${enc(id)}`, { body }),
  remove: (id) => request('DELETE', `/api/sync/jobs/${enc(id)}`),
  run: async (id) => {
    const data = await request('POST', `/api/sync/jobs/${enc(id)}/run`)
    return data && data.run
  },
  runs: async (query) => {
    const data = await request('GET', '/api/sync/runs', { query })
    return (data && data.runs) || []
  },
  getRun: (id) => request('GET', `/api/sync/runs/${enc(id)}`),
  cancel: (id) => request('POST', `/api/sync/runs/${enc(id)}/cancel`),
}

// 0..100 for {done, total}; a finished run with nothing to do is complete.
export function percentOf(p, finished = false) {
  const total = p ? Number(p.total) || 0 : 0
  if (!total) return finished ? 100 : 0
  return Math.max(0, Math.min(100, Math.floor(((Number(p.done) || 0) * 100) / total)))
}

// "45 s", "3 min 05 s", "2 h 04 min"
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return '-'
  const s = Math.max(0, Math.round(Number(seconds)))
  if (s < 60) return `${s} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`
}

// A job's schedule in words: "manual only", "every 6 hours", "cron 0 3 * * *".
export function scheduleText(schedule) {
  if (!schedule) return t('sync.scheduleNone')
  if (schedule.cron) return `cron ${schedule.cron}`
  const secs = Number(schedule.interval) || 0
  if (secs && secs % 3600 === 0) return t('sync.everyText', { n: secs / 3600, unit: t('sync.hours') })
  return t('sync.everyText', { n: Math.round(secs / 60), unit: t('sync.minutes') })
}

// The server's field errors of one form item: its own key and those under it
// ("images", "images.2", "images[2]", "schedule.cron" for "schedule").
export function fieldError(fieldErrors, key) {
  const found = Object.entries(fieldErrors)
    .filter(([k]) => k === key || k.startsWith(`${key}.`) || k.startsWith(`${key}[`))
    .map(([k, v]) => (k === key ? v : `${k}: ${v}`))
  return found.length ? found.join('; ') : ''
}
