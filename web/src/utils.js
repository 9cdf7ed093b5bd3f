import { ElMessage, ElMessageBox } from 'element-plus'
import { lang, t } from './i18n'

export function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '-'
  let value = Number(n)
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let i = 0
  while (Math.abs(value) >= 1024 && i < units.length - 1) {
    value /= 1024
    i += 1
  }
  return `${i === 0 ? value : value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)} ${units[i]}`
}

// An axis label: like formatBytes without trailing zeros ("1.5 KiB", "2 MiB").
export function formatBytesAxis(n) {
  const text = formatBytes(n)
  const m = /^(-?[0-9.]+) (.+)$/.exec(text)
  return m ? `${parseFloat(m[1])} ${m[2]}` : text
}

// The scale of a bytes axis from 0 to at least `max`: steps of 1, 2 or 5 × 10^n of one unit
// (B, KiB, MiB, ...), at most 5 of them, so that no label is a fraction of a byte.
export function bytesAxisScale(max) {
  const top = Math.max(Number(max) || 0, 1)
  let unit = 1
  while (top / unit >= 1024 && unit < 1024 ** 5) unit *= 1024
  const v = top / unit
  const step = [1, 2, 5, 10, 20, 50, 100, 200, 500].find((s) => v / s <= 5) * unit
  return { min: 0, max: Math.ceil(top / step) * step, interval: step }
}

function pad2(n) {
  return String(n).padStart(2, '0')
}

// "2026-11-26 23:45:47" in the browser's time zone: the same in both languages, sortable.
export function formatTime(seconds) {
  if (seconds === null || seconds === undefined || seconds === '') return '-'
  const d = new Date(Number(seconds) * 1000)
  if (Number.isNaN(d.getTime())) return '-'
  return (
    `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`
  )
}

// "23:45:47" today, "11-27 08:00" on another day: for a time close to now.
export function formatShortTime(seconds) {
  if (seconds === null || seconds === undefined || seconds === '') return '-'
  const d = new Date(Number(seconds) * 1000)
  if (Number.isNaN(d.getTime())) return '-'
  const now = new Date()
  if (d.toDateString() === now.toDateString()) return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`
  const day = `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`
  return `${d.getFullYear() === now.getFullYear() ? day : `${d.getFullYear()}-${day}`} ${pad2(d.getHours())}:${pad2(d.getMinutes())}`
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return '-'
  const v = Number(ms)
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v < 10 ? 1 : 0)} ms`
}

// The one-line summary of a registry's "test connection" result.
export function testSummary(r) {
  if (!r) return ''
  if (r.ok) return t('registries.testOk', { status: r.status ?? '-', latency: formatMs(r.latency_ms), auth: r.auth || '-' })
  return t('registries.testFail', { error: r.error || (r.status ? `HTTP ${r.status}` : '-') })
}

export function formatNumber(n) {
  if (n === null || n === undefined) return '-'
  return Number(n).toLocaleString(lang.value === 'en' ? 'en-US' : 'zh-CN')
}

export function formatPercent(x) {
  if (x === null || x === undefined) return '-'
  return `${(Number(x) * 100).toFixed(Number(x) < 0.1 ? 2 : 1)} %`
}

// The server's field messages are English; the most common ones get a Chinese text.
const SERVER_TEXT_ZH = {
  'already exists': '已存在',
  required: '必填',
  'must not be empty': '不能为空',
  'must be true or false': '必须为 true 或 false',
  "is the admin account's name, which cannot be a registry user": '与管理员账号同名，不能作为仓库用户',
  "may only contain letters, digits, '.', '_' and '-'": "只能包含字母、数字、'.'、'_' 和 '-'",
  'must be at least 8 characters': '至少 8 个字符',
  'must be at most 1024 characters': '最多 1024 个字符',
  'must not be the default password': '不能使用默认密码',
  'is not the current password': '当前密码不正确',
  'must differ from the current password': '不能与当前密码相同',
  'must not contain control characters': '不能包含控制字符',
  'must be a registry host name, optionally with :port (e.g. ghcr.io)': '须为仓库主机名，可带 :端口（如 ghcr.io）',
  "must contain a '.' or a port, or be localhost (e.g. ghcr.io, registry:5000)": "须包含“.”或端口，或为 localhost（如 ghcr.io、registry:5000）",
  'has an invalid port': '端口无效',
  'must be at most 100 characters': '最多 100 个字符',
  'must be at most 255 characters': '最多 255 个字符',
  'is longer than 255 characters': '超过 255 个字符',
  'repository names are lower case': '仓库名须为小写',
  "must not start with '/'": "不能以 '/' 开头",
  // the access log's filters
  'must not be before from': '不能早于开始时间',
  'must not be negative (a Unix time in seconds)': '不能为负数（Unix 时间，秒）',
  'must be a Unix time in seconds (a number)': '须为 Unix 时间（秒）',
  'must be at most 253 characters': '最多 253 个字符',
  // a registry's proxy and TLS settings
  'must start with http://, socks5:// or socks5h://': '须以 http://、socks5:// 或 socks5h:// 开头',
  // zmirror/config/proxyurl.py's reasons (they name the proxy URL themselves)
  'proxy URL is empty': '代理地址为空',
  'proxy URL has spaces, control or non-ASCII characters': '代理地址含有空格、控制字符或非 ASCII 字符',
  'proxy URL must start with http://, socks5:// or socks5h://': '须以 http://、socks5:// 或 socks5h:// 开头',
  'proxy URL must be scheme://[user:password@]host:port with nothing after the port': '须为 协议://[用户:密码@]主机:端口，端口后不能有其他内容',
  'proxy URL has an invalid host or port': '不是有效的地址：主机或端口无效',
  'proxy URL scheme https:// (TLS to the proxy) is not supported: use http://': '不支持 https:// 代理（到代理的 TLS 连接）：请使用 http://',
  'proxy URL has no host': '缺少代理主机',
  'proxy URL has a path, query or fragment (expected scheme://[user:password@]host:port)': '不能包含路径、查询或片段（应为 协议://[用户:密码@]主机:端口）',
  'proxy URL has port 0': '端口不能为 0',
  'is not a valid URL (http://user:password@host:3128)': '不是有效的地址（http://用户:密码@主机:3128）',
  'must name the proxy host (http://host:3128)': '须包含代理主机（http://主机:3128）',
  'must be scheme://[user:password@]host:port with nothing after the port': '须为 协议://[用户:密码@]主机:端口，端口后不能有其他内容',
  'must not contain whitespace or control characters': '不能包含空白或控制字符',
  'SOCKS5 proxy user name and password are at most 255 bytes each': 'SOCKS5 代理的用户名和密码各最多 255 字节',
  'the password is masked (****): enter it': '密码显示为 ****：请重新输入密码',
  'no PEM certificate found (expected -----BEGIN CERTIFICATE-----)': '未找到 PEM 证书（应以 -----BEGIN CERTIFICATE----- 开头）',
  'only CERTIFICATE blocks are accepted': '只能包含 CERTIFICATE 证书块',
  'a certificate could not be parsed (damaged or not PEM)': '证书无法解析（已损坏或不是 PEM 格式）',
  'contains a private key: paste only certificates here': '包含私钥：这里只能粘贴证书',
  'contains a private key: paste only certificates here (the key goes in client_key)': '包含私钥：这里只能粘贴证书（私钥请填写在“客户端私钥”）',
  'the key is encrypted: paste an unencrypted key (openssl pkey -in key.pem)': '私钥已加密：请粘贴未加密的私钥（openssl pkey -in key.pem）',
  'expected exactly one PEM private key (-----BEGIN PRIVATE KEY-----)': '须为一个 PEM 私钥（-----BEGIN PRIVATE KEY-----）',
  'the private key could not be parsed (damaged or not PEM)': '私钥无法解析（已损坏或不是 PEM 格式）',
  'the private key could not be used (unsupported type)': '私钥无法使用（不支持的类型）',
  'required with client_cert': '填写客户端证书时必填',
  'required with client_key': '填写客户端私钥时必填',
  'does not match client_cert (the first certificate)': '与客户端证书（第一个证书）不匹配',
  'must be an ASCII DNS name (use the xn-- form) or an IP address': '须为 ASCII 域名（使用 xn-- 形式）或 IP 地址',
  'not a valid DNS name or IP address': '不是有效的域名或 IP 地址',
}

export function translateServerText(text) {
  if (lang.value !== 'en' && Object.prototype.hasOwnProperty.call(SERVER_TEXT_ZH, text)) return SERVER_TEXT_ZH[text]
  return text
}

// Shows an API error: field errors go into `fieldErrors` (a reactive object bound to the
// form items' :error), everything else becomes a message. A 401 was already handled
// (back to the login page).
export function showError(err, fieldErrors) {
  if (err && err.handled) return
  const fields = (err && err.fields) || {}
  if (fieldErrors) {
    Object.keys(fieldErrors).forEach((k) => delete fieldErrors[k])
    Object.entries(fields).forEach(([k, v]) => {
      fieldErrors[k] = translateServerText(String(v))
    })
  }
  const message = (err && err.message) || String(err)
  if (fieldErrors && Object.keys(fields).length) {
    // the details are next to the fields
    ElMessage({ type: 'error', message: t('common.fixErrors'), grouping: true })
  } else {
    ElMessage({ type: 'error', message, grouping: true, duration: 5000 })
  }
}

export function clearErrors(fieldErrors) {
  Object.keys(fieldErrors).forEach((k) => delete fieldErrors[k])
}

// A confirmation box for a destructive action (the confirm button says "delete");
// resolves to true when the user confirmed.
export async function confirmDanger(message, title = t('common.deleteTitle')) {
  try {
    await ElMessageBox.confirm(message, title, {
      type: 'warning',
      confirmButtonText: t('common.delete'),
      cancelButtonText: t('common.cancel'),
      confirmButtonClass: 'el-button--danger',
    })
    return true
  } catch (e) {
    return false
  }
}

// Copies text; falls back to a hidden textarea where the Clipboard API is missing
// (it needs a secure context, and this UI is often served over plain HTTP).
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text)
      return true
    }
  } catch (e) {
    /* fall through */
  }
  const ta = document.createElement('textarea')
  ta.value = text
  ta.setAttribute('readonly', '')
  ta.style.position = 'fixed'
  ta.style.top = '-1000px'
  document.body.appendChild(ta)
  ta.select()
  let ok = false
  try {
    ok = document.execCommand('copy')
  } catch (e) {
    ok = false
  }
  document.body.removeChild(ta)
  return ok
}

export function isValidRegistryUrl(value) {
  let u
  try {
    u = new URL(value)
  } catch (e) {
    return false
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return false
  if (u.username || u.password || u.search || u.hash || !u.hostname) return false
  if (/[?#@]/.test(value.replace(/^https?:\/\//, '').split('/')[0]) || /[?#]/.test(value)) return false
  return true
}

// A rate-limit window (seconds) as "6 h", "30 min", "45 s", "1 d".
export function formatWindow(seconds) {
  const s = Number(seconds)
  if (!Number.isFinite(s) || s <= 0) return '-'
  const units = [
    [86400, lang.value === 'en' ? 'd' : '天'],
    [3600, lang.value === 'en' ? 'h' : '小时'],
    [60, lang.value === 'en' ? 'min' : '分钟'],
  ]
  for (const [size, name] of units) {
    if (s >= size && s % size === 0) return `${s / size} ${name}`
  }
  for (const [size, name] of units) {
    if (s >= size) return `${(s / size).toFixed(1)} ${name}`
  }
  return `${s} ${lang.value === 'en' ? 's' : '秒'}`
}
