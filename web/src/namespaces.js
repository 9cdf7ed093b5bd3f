// Namespaces: the registry host an upstream mirrors (docs/api.md, README "Several
// registries"). docker.io names are bare (library/nginx); every other namespace's names
// carry its host in front (ghcr.io/owner/img).

export const DOCKER_HUB = 'docker.io'
const DOCKER_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io'])

// The usual registries: picking one fills the form's namespace, name and URL, and shows
// what its credentials are (`auth`: an i18n key under registries.presetAuth).
export const PRESETS = [
  { key: 'dockerhub', namespace: 'docker.io', name: 'Docker Hub', url: 'https://registry-1.docker.io', auth: 'dockerhub', example: 'library/nginx' },
  { key: 'ghcr', namespace: 'ghcr.io', name: 'GitHub (ghcr.io)', url: 'https://ghcr.io', auth: 'ghcr', example: 'owner/image' },
  { key: 'quay', namespace: 'quay.io', name: 'Quay (quay.io)', url: 'https://quay.io', auth: 'quay', example: 'prometheus/prometheus' },
  { key: 'k8s', namespace: 'registry.k8s.io', name: 'Kubernetes (registry.k8s.io)', url: 'https://registry.k8s.io', auth: 'none', example: 'pause:3.10' },
  { key: 'gcr', namespace: 'gcr.io', name: 'Google (gcr.io)', url: 'https://gcr.io', auth: 'gcr', example: 'distroless/static' },
  { key: 'nvcr', namespace: 'nvcr.io', name: 'NVIDIA (nvcr.io)', url: 'https://nvcr.io', auth: 'nvcr', username: '$oauthtoken', example: 'nvidia/cuda:12.4.1-base-ubuntu22.04' },
  { key: 'mcr', namespace: 'mcr.microsoft.com', name: 'Microsoft (mcr.microsoft.com)', url: 'https://mcr.microsoft.com', auth: 'none', example: 'dotnet/runtime:8.0' },
]

// An example image of a namespace (for the how-to page), without the namespace.
export function exampleImage(ns) {
  const p = PRESETS.find((x) => x.namespace === ns)
  return p ? p.example : 'owner/image'
}

// Whether a name component reads as a registry host (docker's rule).
export function hostlike(component) {
  return component.includes('.') || component.includes(':') || component === 'localhost'
}

const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?'
const HOST_PORT = new RegExp(`^${LABEL}(?:\\.${LABEL})*(?::([0-9]{1,5}))?$`)

// The namespace as the server stores it (lower case, docker.io for its aliases), or null
// when it is no host[:port] with a '.' or a port (or localhost).
export function normalizeNamespace(raw) {
  const ns = String(raw || '').trim().toLowerCase()
  if (!ns || ns.length > 253) return null
  const m = HOST_PORT.exec(ns)
  if (!m) return null
  if (m[1] !== undefined && !(Number(m[1]) > 0 && Number(m[1]) <= 65535)) return null
  if (!hostlike(ns)) return null
  return DOCKER_ALIASES.has(ns) ? DOCKER_HUB : ns
}

// The namespace of a canonical name or whitelist prefix: its first component when that is
// a registry host (`ghcr.io/owner` → ghcr.io, `ghcr.io` alone too), else docker.io; a `*`
// entry without a '/' (`g*`) stays within Docker Hub.
export function namespaceOfName(name) {
  const text = String(name || '')
  if (!text.includes('/') && text.endsWith('*')) return DOCKER_HUB
  const first = text.split('/')[0]
  if (!first || !hostlike(first) || first.endsWith('.')) return DOCKER_HUB
  const ns = normalizeNamespace(first)
  return ns || DOCKER_HUB
}

// docker.io first, then the others by name.
export function compareNamespaces(a, b) {
  if (a === b) return 0
  if (a === DOCKER_HUB) return -1
  if (b === DOCKER_HUB) return 1
  return a < b ? -1 : 1
}

// The namespaces of a list of registries, sorted (docker.io first).
export function namespacesOf(registries) {
  const set = new Set((registries || []).map((r) => r.namespace || DOCKER_HUB))
  return [...set].sort(compareNamespaces)
}
