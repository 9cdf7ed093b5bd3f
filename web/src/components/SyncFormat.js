// Helpers of the sync page and its components (web/src/views/Sync.vue, Sync*.vue): the API
// client of /api/sync (docs/api.md) and how a job's and a run's figures are written.
import { request } from '../api'
import { lang, t } from '../i18n'

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

// The sync API's field messages (zmirror/sync/spec.py) in Chinese; "entry N <reason>"
// names the line of the images (or platforms) list.
const SYNC_TEXT_ZH = {
  'must not be empty': '不能为空',
  'is not a valid repository name (lower case, e.g. library/nginx:1.27)': '不是有效的仓库名（须小写，如 library/nginx:1.27）',
  'has an invalid digest (sha256:<64 hex> or sha512:<128 hex>)': '摘要无效（sha256:<64 位十六进制> 或 sha512:<128 位十六进制>）',
  'has an invalid tag pattern (tag characters and * or ?)': '标签模式无效（只能是标签字符和 * 或 ?）',
  'has an invalid tag': '标签无效',
  'must be os/architecture or os/architecture/variant (e.g. linux/arm/v7)': '须为 系统/架构 或 系统/架构/变体（如 linux/arm/v7）',
  'cron must have five fields: minute hour day-of-month month day-of-week': 'Cron 须为五段：分 时 日 月 周',
  'cron is not a valid cron expression': '不是有效的 Cron 表达式',
  'may hold letters, digits, spaces and _ . : - (starting with a letter or digit)': '只能包含字母、数字、空格和 _ . : -（以字母或数字开头）',
}

export function syncText(text) {
  if (lang.value === 'en') return text
  const m = /^entry (\d+) (.*)$/.exec(text)
  if (m) return `第 ${m[1]} 行：${SYNC_TEXT_ZH[m[2]] || m[2]}`
  return SYNC_TEXT_ZH[text] || text
}

// The server's field errors of one form item: its own key and those under it
// ("images", "images.2", "images[2]", "schedule.cron" for "schedule").
export function fieldError(fieldErrors, key) {
  const found = Object.entries(fieldErrors)
    .filter(([k]) => k === key || k.startsWith(`${key}.`) || k.startsWith(`${key}[`))
    .map(([k, v]) => (k === key ? syncText(v) : `${k}: ${syncText(v)}`))
  return found.length ? found.join('; ') : ''
}
