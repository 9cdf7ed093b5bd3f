import { ref } from 'vue'

// true below 768 px: the side menu becomes a drawer, forms put labels on top.
const query = window.matchMedia('(max-width: 767px)')
export const isMobile = ref(query.matches)
const update = (e) => {
  isMobile.value = e.matches
}
if (query.addEventListener) query.addEventListener('change', update)
else query.addListener(update)
