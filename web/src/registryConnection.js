// The registry dialog's connection settings (proxy and TLS) between the admin API's
// registry object and the form (docs/api.md, "Registries").
//
// API: proxy null = the default ([upstream] proxy or the environment), "" = direct, else a
// URL (its password masked as **** on GET; sent back unchanged it keeps the stored one);
// tls_verify (default true); ca, client_cert, server_name (default ""); client_key is
// write-only: GET has has_client_key, a PUT without it keeps the key, "" clears it.

export const CONNECTION_FIELDS = ['proxy', 'tls_verify', 'ca', 'client_cert', 'client_key', 'server_name']

const DEFAULTS = { proxy: null, tls_verify: true, ca: '', client_cert: '', server_name: '' }

// The form's connection fields for `row` (null: a new registry).
export function connectionForm(row = null) {
  const r = row || {}
  const proxy = r.proxy === undefined ? null : r.proxy
  return {
    proxyMode: proxy === null ? 'default' : proxy === '' ? 'direct' : 'custom',
    proxy: typeof proxy === 'string' ? proxy : '',
    tls_verify: r.tls_verify !== false,
    ca: r.ca || '',
    client_cert: r.client_cert || '',
    client_key: '',
    clearClientKey: false,
    server_name: r.server_name || '',
  }
}

export function proxyValue(form) {
  if (form.proxyMode === 'direct') return ''
  if (form.proxyMode === 'custom') return (form.proxy || '').trim()
  return null
}

// The connection fields of a create/update body: for a new registry those that differ from
// the defaults; when editing also every one the server reported (an unchanged masked proxy
// goes back as it came). The client key only when typed, or "" when it is to be cleared.
export function connectionBody(form, row = null) {
  const values = {
    proxy: proxyValue(form),
    tls_verify: !!form.tls_verify,
    ca: form.ca || '',
    client_cert: form.client_cert || '',
    server_name: (form.server_name || '').trim(),
  }
  const body = {}
  Object.entries(values).forEach(([k, v]) => {
    if (v !== DEFAULTS[k] || (row && k in row)) body[k] = v
  })
  if (row && row.has_client_key && form.clearClientKey) body.client_key = ''
  else if ((form.client_key || '').trim()) body.client_key = form.client_key
  return body
}

// Whether the section should start open: anything but the defaults.
export function hasCustomConnection(row) {
  if (!row) return false
  return (
    (row.proxy !== undefined && row.proxy !== null) ||
    row.tls_verify === false ||
    !!row.ca ||
    !!row.client_cert ||
    !!row.has_client_key ||
    !!row.server_name
  )
}

// http://, socks5:// or socks5h:// then [user:password@]host[:port] (the server checks the rest).
export function looksLikeProxyUrl(value) {
  return /^(http|socks5h?):\/\/[^\s/?#]+\/?$/i.test(value || '')
}
