// The configured namespaces (those of the registries), for the pages that show or filter
// by namespace. docker.io always counts (README: "Several registries").
import { onMounted, ref } from 'vue'
import { api } from '../api'
import { DOCKER_HUB, compareNamespaces, namespacesOf } from '../namespaces'

export function useNamespaces() {
  const namespaces = ref([DOCKER_HUB])

  async function loadNamespaces() {
    try {
      const data = await api.registries.list()
      const list = namespacesOf((data && data.items) || [])
      if (!list.includes(DOCKER_HUB)) list.push(DOCKER_HUB)
      namespaces.value = list.sort(compareNamespaces)
    } catch (e) {
      /* the page works without: docker.io only */
    }
  }

  onMounted(loadNamespaces)
  return { namespaces, loadNamespaces }
}
